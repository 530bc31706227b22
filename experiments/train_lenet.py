"""Train LeNet-5 on MNIST; resumes from --workdir's checkpoint.

  python experiments/train_lenet.py --config configs/lenet_mnist.py --workdir runs/lenet
  python experiments/train_lenet.py --config configs/lenet_mnist.py --config.model.impl=patches --workdir runs/patches

The same program as ``experiments/train.py`` (which trains any model config). A refused or failed
run (bad config or data, a workdir held by another run, checkpoints of another config, a diverged
loss, a full or read-only disk) exits with status 1 and one line on stderr; ``--verbose`` (or
``JAXCONV_VERBOSE=1``) shows the traceback.
"""

import time

START = time.perf_counter()  # elapsed_seconds counts from here: imports, data loading and compiling included

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: experiments.lenet, configs

from experiments.lenet.cli import main  # noqa: E402

if __name__ == "__main__":
  main("train_lenet.py", START, "Training configuration file (configs/lenet_mnist.py, ...).")
