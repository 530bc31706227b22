"""Train LeNet-5 on MNIST; resumes from --workdir's checkpoint.

  python experiments/train_lenet.py --config configs/lenet_mnist.py --workdir runs/lenet
  python experiments/train_lenet.py --config configs/lenet_mnist.py --config.model.impl=patches --workdir runs/patches

A refused or failed run (bad config or data, a workdir held by another run, checkpoints of
another config, a diverged loss, a full or read-only disk) exits with status 1 and one line on stderr.
"""

import time

START = time.perf_counter()  # elapsed_seconds counts from here: imports, data loading and compiling included

import errno  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: experiments.lenet, configs

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments.lenet import train_and_evaluate  # noqa: E402
from jaxconv import parallel  # noqa: E402
from jaxconv.training import (  # noqa: E402
  ConfigMismatchError,
  NoIntactCheckpointError,
  NonFiniteLossError,
  WorkdirLockedError,
  quiet_writer_threads,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and curves.png.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

# What a user can act on: reported as one line (the message names the field, epoch or holder).
REFUSALS = (ValueError, ConfigMismatchError, NoIntactCheckpointError, NonFiniteLossError, WorkdirLockedError)
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES)


def main(argv: list[str]) -> None:
  """Train and evaluate the configured model."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # jaxconv's epoch lines at INFO; orbax's per-save chatter (through absl) only from WARNING up.
  absl_logging.set_verbosity(absl_logging.WARNING)
  log = logging.getLogger("jaxconv")
  log.setLevel(logging.INFO)
  quiet_writer_threads()  # a failed save is reported once, below
  try:
    parallel.initialize_distributed(FLAGS.config)  # before jax.devices() starts the backend
    log.info("JAX %s on %s", jax.__version__, jax.devices())
    log.info("config:\n%s", FLAGS.config)
    train_and_evaluate(FLAGS.config, FLAGS.workdir, start_time=START)
  except REFUSALS as e:
    sys.exit(f"train_lenet.py: error: {e}")
  except OSError as e:
    if e.errno not in DISK_ERRORS:
      raise
    sys.exit(f"train_lenet.py: error: {e.strerror if e.filename is None else e}")


if __name__ == "__main__":
  app.run(main)
