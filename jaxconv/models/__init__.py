"""Models built from ``jaxconv.nn`` layers."""

from jaxconv.models.lenet import VARIANTS, LeNet

__all__ = ["LeNet", "VARIANTS"]
