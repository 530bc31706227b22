"""Modern LeNet-5 (ReLU, max pooling) on the bundled MNIST: Adam, one-cycle schedule, label smoothing,
on-device augmentation (shifts of up to 2 pixels, rotations up to 10 degrees, zoom up to 10%).

Two seeds of this recipe reached 99.32% and 99.31% test accuracy after 10 epochs on an AMD EPYC;
on a 2-core Sapphire Rapids Xeon seeds 0, 1, 2 reached 99.27%, 99.39%, 99.30% (mean 99.32%; the
issue's bar is a mean of 99.3% with each seed at 99.2%). The previous recipe (AdamW 3e-3, warmup +
cosine, no augmentation) reached 99.16%.
"""

import ml_collections

from configs import default
from jaxconv.training import augment


def get_config() -> ml_collections.ConfigDict:
  """Hyperparameters of the main training run."""
  config = default.get_config()
  config.model.variant = "modern"
  config.num_epochs = 10
  config.batch_size = 128
  config.optimizer = "adam"
  config.learning_rate = 5e-3
  config.schedule = "one_cycle"
  config.warmup_epochs = 2.0  # one_cycle's pct_start = warmup_epochs / num_epochs = 0.2
  config.label_smoothing = 0.1
  config.augment = augment.config_fields(max_shift=2, max_rotation=10.0, max_scale=0.1)
  return config
