"""Datasets as numpy arrays: IDX files (the bundled MNIST) and ``tfds.data_source``.

Every loader returns ``(images, labels)``: uint8 images ``(N, H, W, C)`` and int32 labels ``(N,)``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

# The bundled copy of MNIST (the four canonical IDX .gz files and their SHA256SUMS), package data of
# jaxconv, so it is there in a wheel as in a checkout. A ``Traversable``: a ``pathlib.Path`` for every
# installation on a file system (``str(MNIST_DIR)`` is then the folder), ``/`` and ``read_bytes`` always.
MNIST_DIR: Traversable = resources.files("jaxconv") / "datasets" / "mnist"

_SPLITS = ("train", "test")
_MNIST_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "the IDX file format").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(raw: bytes, name: str) -> bytes:
  """``raw`` decompressed when it starts with the gzip magic number, else unchanged."""
  if not raw.startswith(_GZIP_MAGIC):
    return raw
  try:
    return gzip.decompress(raw)
  except (EOFError, OSError) as e:  # gzip.BadGzipFile is an OSError
    raise ValueError(f"{name}: corrupt or truncated gzip stream ({e})") from None


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
  """Decode IDX bytes into an array of the shape and dtype that its header declares."""
  if len(data) < 4:
    raise ValueError(f"{name}: {len(data)} bytes is too short for an IDX header (4 bytes of magic number)")
  zeros, code, ndim = data[:2], data[2], data[3]
  if zeros != b"\0\0" or code not in _IDX_DTYPES:
    codes = sorted(f"{c:02x}" for c in _IDX_DTYPES)
    raise ValueError(
      f"{name}: not an IDX file (magic number {data[:4].hex()}; expected 0000 then a type code in {codes} and the rank)"
    )
  if ndim == 0:
    raise ValueError(f"{name}: IDX header declares rank 0")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{name}: truncated header: rank {ndim} needs {header} bytes, the file has {len(data)}")
  shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[code])
  expected = math.prod(shape) * dtype.itemsize
  found = len(data) - header
  if found < expected:
    raise ValueError(f"{name}: truncated: shape {shape} of {dtype.name} needs {expected} bytes of data, found {found}")
  if found > expected:
    raise ValueError(
      f"{name}: {found - expected} unexpected bytes after the {expected} bytes of data for shape {shape}"
    )
  return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
  """Read an IDX file, gzipped or raw, checking its magic number and size against its header."""
  path = Path(path)
  return parse_idx(_gunzip(path.read_bytes(), str(path)), str(path))


def _find_file(data_dir: Traversable, stem: str) -> Traversable:
  """``data_dir/stem.gz`` or ``data_dir/stem``, whichever exists."""
  for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f"data_dir={str(data_dir)!r} has neither {stem}.gz nor {stem}")


def _read_sha256sums(path: Traversable) -> dict[str, str]:
  """``sha256sum`` output (``HASH [*]NAME`` lines) -> ``{NAME: HASH}``; empty if there is no file."""
  if not path.is_file():
    return {}
  pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
  return {name.strip().lstrip("*"): digest.lower() for digest, name in pairs}


def _check_sha256(data_dir: Traversable, name: str, raw: bytes) -> None:
  """Compare the bytes ``raw`` of ``data_dir/name`` with its entry in ``data_dir/SHA256SUMS``, if any."""
  sums = data_dir / "SHA256SUMS"
  expected = _read_sha256sums(sums).get(name)
  if expected is None:
    return
  actual = hashlib.sha256(raw).hexdigest()
  if actual != expected:
    raise ValueError(
      f"{data_dir / name}: SHA-256 {actual} does not match {expected} in {sums}; the file is corrupt or modified"
    )


def _check_split(split: str) -> str:
  """``split`` if it is one of ``_SPLITS``."""
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}; got {split!r}")
  return split


def _as_examples(images: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Check matching counts and dtypes: -> uint8 images ``(N, H, W, C)``, int32 labels ``(N,)``."""
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"{name}: images must be uint8 (N, H, W[, C]); got {images.dtype} {images.shape}")
  labels = np.asarray(labels).reshape(-1)
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
  return images, labels.astype(np.int32)


def load_mnist(data_dir: str | Path | Traversable = MNIST_DIR, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """MNIST from the four IDX files in ``data_dir`` -> uint8 images ``(N, 28, 28, 1)``, int32 labels ``(N,)``.

  ``data_dir`` defaults to the copy bundled with the package (``MNIST_DIR``); any folder holding the
  four files, gzipped or not, works, and a ``SHA256SUMS`` file there is checked.
  """
  folder: Traversable = Path(data_dir) if isinstance(data_dir, str) else data_dir
  arrays = []
  for stem in _MNIST_FILES[_check_split(split)]:
    path = _find_file(folder, stem)
    raw = path.read_bytes()
    _check_sha256(folder, path.name, raw)
    arrays.append(parse_idx(_gunzip(raw, str(path)), str(path)))
  images, labels = arrays
  return _as_examples(images, labels, f"{folder} ({split})")


def load_tfds(name: str, split: str = "train", data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A prepared TFDS image dataset via ``tfds.data_source`` (no TensorFlow, no download) as arrays."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise ImportError("data.source='tfds' needs tensorflow-datasets: pip install 'jaxconv[tfds]'") from None
  source = tfds.data_source(name, split=_check_split(split), data_dir=data_dir, download=False)
  examples = [source[i] for i in range(len(source))]
  if not examples or not {"image", "label"} <= set(examples[0]):
    raise ValueError(f"tfds dataset {name!r} ({split}) must have 'image' and 'label' features and at least one example")
  images = np.stack([np.asarray(e["image"]) for e in examples])
  return _as_examples(images, np.array([e["label"] for e in examples]), f"tfds {name!r} ({split})")


__all__ = ["MNIST_DIR", "load_mnist", "load_tfds", "parse_idx", "read_idx"]
