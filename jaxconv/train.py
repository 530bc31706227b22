"""Compatibility shim: ``jaxconv.train.train_and_evaluate(config, workdir)``, the LeNet program's entry.

The reusable training library is ``jaxconv.training`` (state, steps, epoch loop, checkpoints, the
workdir lock, for any NNX model and Optax optimiser); the LeNet-on-MNIST program built on it
(config validation, data, reporting, the run) is ``experiments/lenet/`` beside the package, with
its command line ``experiments/train_lenet.py`` and its default config ``configs/default.py``.
This shim is the one place where the package reaches the program, and only when called (from a
checkout, whose root is on ``sys.path``): nothing in the library imports it.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

__all__ = ["train_and_evaluate"]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict]:
  """``experiments.lenet.train_and_evaluate(config, workdir)``: train, resuming from ``workdir``."""
  try:
    from experiments.lenet import train_and_evaluate as program  # the program beside the library, not in it
  except ImportError as e:
    raise ImportError(
      "jaxconv.train.train_and_evaluate runs the LeNet program of the repository's experiments/lenet/; "
      "run from a checkout of jaxconv (its root on sys.path), or build your own loop on jaxconv.training"
    ) from e
  return program(config, workdir)
