"""Train LeNet-5 on MNIST; resumes from --workdir's checkpoint.

  python experiments/train_lenet.py --config configs/lenet_mnist.py --workdir runs/lenet
  python experiments/train_lenet.py --config configs/lenet_mnist.py --config.model.impl=patches --workdir runs/patches
"""

import logging

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxconv import parallel, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and curves.png.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  """Train and evaluate the configured model."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # jaxconv's epoch lines at INFO; orbax's per-save chatter (through absl) only from WARNING up.
  absl_logging.set_verbosity(absl_logging.WARNING)
  log = logging.getLogger("jaxconv")
  log.setLevel(logging.INFO)
  parallel.initialize_distributed(FLAGS.config)  # before jax.devices() starts the backend
  log.info("JAX %s on %s", jax.__version__, jax.devices())
  log.info("config:\n%s", FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
