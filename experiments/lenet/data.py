"""The program's data: the configured splits checked, normalised with the training set's statistics, on the mesh."""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxconv import data as datasets
from jaxconv import parallel
from jaxconv.training.loop import check_labels, place_eval, place_train
from jaxconv.training.state import Batch

__all__ = ["NUM_CLASSES", "device_data", "load_data", "load_split", "normalize"]

NUM_CLASSES = 10  # MNIST's digits; the labels are checked against it

Split = tuple[np.ndarray, np.ndarray]


def _load_idx(config: ml_collections.ConfigDict, split: str) -> Split:
  """The IDX files of ``split`` in ``config.data.dir`` (default: the bundled MNIST); a folder without them: refused."""
  if not config.data.dir:
    return datasets.load_mnist(split=split)
  try:
    return datasets.load_mnist(config.data.dir, split)
  except FileNotFoundError as e:
    raise FileNotFoundError(
      f"config.data.dir={config.data.dir!r} does not hold the MNIST IDX files of the {split} split ({e}); "
      "it needs train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
      "t10k-labels-idx1-ubyte (gzipped or not)"
    ) from None


def _load_tfds(config: ml_collections.ConfigDict, split: str) -> Split:
  """``split`` of the prepared TFDS dataset ``config.data.name``; missing or unprepared data is refused with the fix."""
  name, folder = config.data.name, config.data.dir
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # tfds notes a missing folder at WARNING before failing: one line, below
  try:
    return datasets.load_tfds(name, split, folder)
  except ImportError:
    raise
  except Exception as e:
    where = folder or os.environ.get("TFDS_DATA_DIR") or "TFDS's default folder (~/tensorflow_datasets)"
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise FileNotFoundError(
      f"no prepared tfds dataset {name!r} ({split} split) in {where}: {type(e).__name__}: {reason[:200]}. "
      f'Prepare it on a machine with internet (python -c "import tensorflow_datasets as tfds; '
      f"tfds.data_source('{name}')\", or tfds build {name} --file_format=array_record), copy the folder here "
      "and point --config.data.dir (or TFDS_DATA_DIR) at it"
    ) from None
  finally:
    absl_logger.setLevel(level)


def load_split(config: ml_collections.ConfigDict, split: str) -> Split:
  """One split from ``config.data``, cut to ``train_size``/``test_size`` examples when those are > 0."""
  images, labels = _load_idx(config, split) if config.data.source == "idx" else _load_tfds(config, split)
  limit = config.data.train_size if split == "train" else config.data.test_size
  return (images[:limit], labels[:limit]) if limit else (images, labels)


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
  """uint8 images ``(N, H, W, C)`` -> float32 ``(x / 255 - mean) / std``."""
  return (images.astype(np.float32) / 255.0 - mean) / std


def load_data(config: ml_collections.ConfigDict) -> tuple[Split, Split, dict[str, float]]:
  """Train and test splits normalised with the training set's mean and std, and that ``{"mean", "std"}``.

  Labels outside ``[0, NUM_CLASSES)``, splits of different image sizes and a batch larger than the
  training set are refused here, naming the config field or the split, before anything is compiled.
  """
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
  stats = {"mean": float(scaled.mean()), "std": float(scaled.std())}
  return (normalize(train_x, **stats), train_y), (normalize(test_x, **stats), test_y), stats


def device_data(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> tuple[Batch, Batch]:
  """``load_data``'s splits sharded over ``mesh`` (default: ``config.mesh.data`` devices).

  Each of its ``D`` devices holds an equal block: the training set loses its last ``N % D``
  examples, the test set gets padding that evaluation masks.
  """
  mesh = mesh or parallel.make_mesh(config.mesh.data)
  train, test, _ = load_data(config)
  return place_train(*train, mesh), place_eval(*test, mesh)
