"""Fixtures of the core tests."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# The repository root, for the programs beside the package (experiments.lenet) and configs/ (which
# import configs.default), as experiments/train_lenet.py puts it on the path.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture
def rng() -> np.random.Generator:
  """A fresh, fixed-seed numpy generator per test."""
  return np.random.default_rng(0)


@pytest.fixture
def run_script() -> Callable[..., subprocess.CompletedProcess]:
  """``run_script(path, *args)``: a script of this checkout (path from its root) in a subprocess that imports it."""

  def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, script, *args]
    return subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)

  return run
