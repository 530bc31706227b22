"""A seconds-long run for tests: modern LeNet, 2 epochs on 2,048 training and 512 test images."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Hyperparameters of the smoke run."""
  config = default.get_config()
  config.data.train_size = 2048
  config.data.test_size = 512
  config.num_epochs = 2
  config.batch_size = 64
  config.eval_batch_size = 256
  config.steps_per_call = 8
  config.warmup_epochs = 0.5
  return config
