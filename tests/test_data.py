"""jaxconv.data: the IDX reader (round trips, clear errors), the bundled MNIST, the TFDS source."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from configs import default
from experiments.lenet import data as program_data
from jaxconv import data

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
  """The IDX encoding of ``array``, written from the format's description."""
  header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes, compress: bool = False) -> Path:
  """Write ``payload`` (gzipped if ``compress``) to ``path``."""
  path.write_bytes(gzip.compress(payload) if compress else payload)
  return path


@pytest.mark.parametrize(
  "dtype, shape",
  [
    (np.uint8, (5, 4, 3)),
    (np.int8, (7,)),
    (np.int16, (2, 3)),
    (np.int32, (3, 1)),
    (np.float32, (2, 2, 2, 2)),
    (np.float64, (4,)),
  ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, rng, dtype, shape, compress):
  array = (rng.standard_normal(shape) * 100).astype(dtype)
  got = data.read_idx(write(tmp_path / "a.idx", idx_bytes(array), compress))
  assert got.dtype == np.dtype(dtype) and got.dtype.isnative
  np.testing.assert_array_equal(got, array)


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize(
  "payload, message",
  [
    (GOOD[:-5], r"truncated: shape \(2, 3, 4\) of uint8 needs 24 bytes of data, found 19"),
    (GOOD[:10], r"truncated header: rank 3 needs 16 bytes, the file has 10"),
    (GOOD[:3], "too short for an IDX header"),
    (GOOD + b"\0\0", "2 unexpected bytes after the 24 bytes"),
    (b"\x89PNG" + GOOD[4:], "not an IDX file"),
    (bytes([0, 0, 0x07, 3]) + GOOD[4:], "not an IDX file"),
    (bytes([0, 0, 0x08, 0]), "rank 0"),
  ],
)
def test_read_idx_explains_bad_files(tmp_path, payload, message):
  path = write(tmp_path / "bad.idx", payload)
  with pytest.raises(ValueError, match=message) as info:
    data.read_idx(path)
  assert str(path) in str(info.value)


def test_read_idx_rejects_truncated_gzip(tmp_path):
  compressed = gzip.compress(GOOD)
  path = write(tmp_path / "bad.idx.gz", compressed[: len(compressed) // 2])
  with pytest.raises(ValueError, match="corrupt or truncated gzip"):
    data.read_idx(path)


@pytest.fixture(scope="module")
def mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Both splits of the bundled MNIST."""
  return {split: data.load_mnist(split=split) for split in ("train", "test")}


def test_bundled_mnist(mnist):
  for split, n, first in [
    ("train", 60_000, [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
    ("test", 10_000, [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
  ]:
    images, labels = mnist[split]
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert labels[:10].tolist() == first
    assert sorted(np.unique(labels)) == list(range(10))
  # The well-known per-class counts of the test split.
  assert np.bincount(mnist["test"][1]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_load_mnist_from_raw_files_and_checksums(tmp_path, mnist):
  for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
    (tmp_path / name).write_bytes(gzip.decompress((data.MNIST_DIR / f"{name}.gz").read_bytes()))
  images, labels = data.load_mnist(tmp_path, "test")
  np.testing.assert_array_equal(images, mnist["test"][0])
  np.testing.assert_array_equal(labels, mnist["test"][1])
  # A file that disagrees with SHA256SUMS is refused.
  (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(10_000, np.uint8)))
  digest = hashlib.sha256((tmp_path / "t10k-images-idx3-ubyte").read_bytes()).hexdigest()
  (tmp_path / "SHA256SUMS").write_text(f"{digest}  t10k-images-idx3-ubyte\n{'0' * 64} *t10k-labels-idx1-ubyte\n")
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: SHA-256 .* does not match 0000"):
    data.load_mnist(tmp_path, "test")


def test_load_mnist_errors(tmp_path):
  with pytest.raises(ValueError, match="split must be one of"):
    data.load_mnist(split="validation")
  with pytest.raises(FileNotFoundError, match="neither t10k-images-idx3-ubyte.gz nor t10k-images-idx3-ubyte"):
    data.load_mnist(tmp_path, "test")
  shutil.copy(data.MNIST_DIR / "t10k-images-idx3-ubyte.gz", tmp_path)
  write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(9_999, np.uint8)))
  with pytest.raises(ValueError, match="10000 images but 9999 labels"):
    data.load_mnist(tmp_path, "test")


def test_tfds_source_with_mock_data():
  # tfds.testing.mock_data needs no TensorFlow: it fakes tfds.data_source's records.
  tfds = pytest.importorskip("tensorflow_datasets")
  config = default.get_config()
  config.data.source, config.data.name, config.data.test_size = "tfds", "fashion_mnist", 5
  with tfds.testing.mock_data(num_examples=12):
    images, labels = data.load_tfds("mnist", "test")
    cut_images, cut_labels = program_data.load_split(config, "test")
  assert images.shape == (12, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (12,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10
  assert cut_images.shape == (5, 28, 28, 1) and cut_labels.shape == (5,)
