"""The LeNet-on-MNIST program built on ``jaxconv.training``: config validation, data, reporting, the run.

``experiments/train_lenet.py`` is its command line; ``train_and_evaluate(config, workdir)`` its entry.
"""

from experiments.lenet.config import RESUME_SAFE, validate_config
from experiments.lenet.data import device_data
from experiments.lenet.recipe import create_model, create_optimizer, learning_rate_schedule
from experiments.lenet.report import CURVES_FILE, METRICS_FILE, Progress
from experiments.lenet.train import CHECKPOINT_DIR, restore_model, train_and_evaluate

__all__ = [
  "CHECKPOINT_DIR",
  "CURVES_FILE",
  "METRICS_FILE",
  "RESUME_SAFE",
  "Progress",
  "create_model",
  "create_optimizer",
  "device_data",
  "learning_rate_schedule",
  "restore_model",
  "train_and_evaluate",
  "validate_config",
]
