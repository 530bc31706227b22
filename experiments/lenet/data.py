"""The program's data: the configured splits checked, normalised with the training set's statistics, on the mesh."""

from __future__ import annotations

import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxconv import data as datasets
from jaxconv import parallel
from jaxconv.training import Batch, check_labels, place_eval, place_train

__all__ = ["NUM_CLASSES", "device_data", "load_split", "normalize"]

NUM_CLASSES = 10  # MNIST's digits; the labels are checked against it


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """One split from ``config.data``, cut to ``train_size``/``test_size`` examples when those are > 0."""
  if config.data.source == "idx":
    images, labels = (
      datasets.load_mnist(config.data.dir, split) if config.data.dir else datasets.load_mnist(split=split)
    )
  else:
    images, labels = datasets.load_tfds(config.data.name, split, config.data.dir)
  limit = config.data.train_size if split == "train" else config.data.test_size
  return (images[:limit], labels[:limit]) if limit else (images, labels)


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
  """uint8 images ``(N, H, W, C)`` -> float32 ``(x / 255 - mean) / std``."""
  return (images.astype(np.float32) / 255.0 - mean) / std


def device_data(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> tuple[Batch, Batch]:
  """Train and test splits, normalised with the training set's mean and std, sharded over ``mesh``.

  ``mesh`` defaults to ``config.mesh.data`` devices. Each of its ``D`` devices holds an equal block:
  the training set loses its last ``N % D`` examples, the test set gets padding that evaluation
  masks. Labels outside ``[0, NUM_CLASSES)`` and splits of different image sizes are refused here,
  before anything is compiled.
  """
  mesh = mesh or parallel.make_mesh(config.mesh.data)
  train_x, train_y = load_split(config, "train")
  test_x, test_y = load_split(config, "test")
  if config.batch_size > len(train_x):
    raise ValueError(f"config.batch_size={config.batch_size} is larger than the training set ({len(train_x)} examples)")
  if train_x.shape[1:] != test_x.shape[1:]:
    raise ValueError(
      f"the train and test images differ in size: train {train_x.shape[1:]}, test {test_x.shape[1:]} (H, W, C)"
    )
  check_labels(train_y, NUM_CLASSES, "train")
  check_labels(test_y, NUM_CLASSES, "test")
  # Statistics of the whole split on every process, so that every host normalises alike.
  scaled = train_x.astype(np.float64) / 255.0
  mean, std = float(scaled.mean()), float(scaled.std())
  return place_train(normalize(train_x, mean, std), train_y, mesh), place_eval(
    normalize(test_x, mean, std), test_y, mesh
  )
