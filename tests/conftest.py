"""Fixtures of the core tests."""

import sys
from pathlib import Path

import numpy as np
import pytest

# The repository root, for the programs beside the package (experiments.lenet) and configs/ (which
# import configs.default), as experiments/train_lenet.py puts it on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture
def rng() -> np.random.Generator:
  """A fresh, fixed-seed numpy generator per test."""
  return np.random.default_rng(0)
