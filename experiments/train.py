"""Train any model config (LeNet-5, ResNet) on MNIST-like data; resumes from --workdir's checkpoint.

  python experiments/train.py --config configs/resnet_mnist.py --workdir runs/resnet
  python experiments/train.py --config configs/resnet_mnist.py --config.data.source=idx \\
      --config.data.dir=/data/fashion_mnist --config.num_epochs=3 --config.seed=1 --workdir runs/fashion

``config.model.name`` picks the model ("lenet" or "resnet"); every field and override of
``experiments/train_lenet.py`` works here. A refused or failed run exits with status 1 and one
line on stderr; ``--verbose`` (or ``JAXCONV_VERBOSE=1``) shows the traceback.
"""

import time

START = time.perf_counter()  # elapsed_seconds counts from here: imports, data loading and compiling included

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: experiments.lenet, configs

from experiments.lenet.cli import main  # noqa: E402

if __name__ == "__main__":
  main("train.py", START, "Training configuration file (configs/resnet_mnist.py, configs/lenet_mnist.py, ...).")
