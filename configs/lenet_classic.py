"""Classic LeNet-5 (sigmoid, average pooling) on the bundled MNIST with SGD, as in d2l.ai."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Hyperparameters of the classic run."""
  config = default.get_config()
  config.model.variant = "classic"
  config.num_epochs = 10
  config.batch_size = 256
  config.optimizer = "sgd"
  config.learning_rate = 0.9
  config.momentum = 0.0
  config.schedule = "constant"
  config.warmup_epochs = 0.0
  return config
