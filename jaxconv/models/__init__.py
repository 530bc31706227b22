"""Models built from ``jaxconv.nn`` layers: LeNet-5 and a ResNet for small images."""

from jaxconv.models.lenet import VARIANTS, LeNet
from jaxconv.models.resnet import BasicBlock, ResNet

__all__ = ["BasicBlock", "LeNet", "ResNet", "VARIANTS"]
