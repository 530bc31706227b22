"""Modern LeNet-5 (ReLU, max pooling) on the bundled MNIST: AdamW, one warmup epoch, cosine decay."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Hyperparameters of the main training run."""
  config = default.get_config()
  config.model.variant = "modern"
  config.num_epochs = 10
  config.batch_size = 128
  config.optimizer = "adamw"
  config.learning_rate = 3e-3
  config.weight_decay = 0.05
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 1.0
  return config
