"""Fixtures of the core tests."""

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
  """A fresh, fixed-seed numpy generator per test."""
  return np.random.default_rng(0)
