"""A small ResNet (BatchNorm, basic residual blocks, strided convs, global average pool) on the bundled MNIST.

``jaxconv.models.ResNet`` with its defaults: three stages of one basic block, 16/32/64 channels at
28x28, 14x14 and 7x7 (77,754 parameters). AdamW with a one-cycle schedule, label smoothing 0.1,
and on-device augmentation (shifts of up to 2 pixels, rotations up to 10 degrees, zoom up to 10%).
Seed 0 reached 99.65% MNIST test accuracy after the 10 epochs (99.09% after 3, 99.44% after 6) on a
2-core AMD EPYC (AVX-512); the target is 99.5%.

  python experiments/train.py --config configs/resnet_mnist.py --workdir runs/resnet
"""

import ml_collections

from configs import default
from experiments.lenet.config import augment_fields


def get_config() -> ml_collections.ConfigDict:
  """Hyperparameters of the ResNet run."""
  config = default.get_config()
  config.model.name = "resnet"
  config.model.stage_sizes = (1, 1, 1)  # basic blocks per stage
  config.model.widths = (16, 32, 64)  # channels per stage; each stage after the first halves H and W
  config.num_epochs = 10
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.optimizer = "adamw"
  config.learning_rate = 5e-3
  config.weight_decay = 0.05  # decoupled: each step shrinks the weights by lr * weight_decay
  config.schedule = "one_cycle"
  config.warmup_epochs = 2.0  # one_cycle's pct_start = warmup_epochs / num_epochs = 0.2
  config.label_smoothing = 0.1
  config.augment = augment_fields(max_shift=2, max_rotation=10.0, max_scale=0.1)
  return config
