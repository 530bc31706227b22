"""The training program built on ``jaxconv.training``: config validation, data, model and optimiser, reporting.

It trains the model ``config.model.name`` picks (LeNet-5 or a ResNet) on MNIST-like data;
``experiments/train_lenet.py`` and ``experiments/train.py`` are its command lines (``cli.main``),
``train_and_evaluate(config, workdir)`` its entry.
"""

from experiments.lenet.config import RESUME_SAFE, validate_config
from experiments.lenet.data import device_data, load_data
from experiments.lenet.recipe import create_model, create_optimizer, learning_rate_schedule, model_spec
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
  "load_data",
  "model_spec",
  "restore_model",
  "train_and_evaluate",
  "validate_config",
]
