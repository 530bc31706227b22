"""Smoke check of an installed jaxconv, run from outside the checkout (``.ci/run`` does, on the wheel).

  python .ci/wheel_check.py [WORKDIR]

Imports the library (without pulling in matplotlib), loads the bundled MNIST from the installed
package, checks a small conv against numpy, trains the modern LeNet for one short epoch with
``jaxconv.training.fit`` alone and restores its checkpoint into a fresh model (the LeNet program
lives in the checkout's ``experiments/``, not in the wheel). Exits non-zero, naming the failed step,
on any failure.
"""

from __future__ import annotations

import importlib.metadata
import sys
import tempfile
import time
from pathlib import Path


def main(workdir: Path) -> None:
  """Run the checks; print one line per step."""
  start = time.perf_counter()
  import numpy as np

  import jaxconv as jc
  from jaxconv import data, models, nn  # noqa: F401  (the library's modules import on their own)

  checkout = Path(__file__).resolve().parent.parent
  where = Path(jc.__file__).resolve().parent
  assert where != checkout / "jaxconv", f"jaxconv imported from the checkout ({where}), not from the installed wheel"
  assert "matplotlib" not in sys.modules, "importing the library pulled in matplotlib"
  print(f"jaxconv {jc.__version__} from {where}")

  images, labels = data.load_mnist(split="test")
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8, (images.shape, images.dtype)
  assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  assert (where / "py.typed").is_file(), "py.typed is missing from the installed package"
  files = {str(f) for f in importlib.metadata.files("jaxconv") or ()}
  assert any(f.endswith("licenses/LICENSE") for f in files), "the LICENSE is missing from the installed metadata"
  print(f"bundled MNIST: test split {images.shape} from {data.MNIST_DIR}")

  x = np.arange(1.0, 6.0)
  np.testing.assert_allclose(jc.correlate(x, [1.0, 1.0]), np.correlate(x, [1.0, 1.0], "valid"))
  y = jc.conv(np.ones((2, 6, 6, 3), np.float32), np.ones((3, 3, 3, 4), np.float32), padding="same", impl="auto")
  assert y.shape == (2, 6, 6, 4) and float(y[0, 2, 2, 0]) == 27.0, y.shape
  print("conv: values as numpy")

  # A short training through the library alone (the LeNet program lives in the checkout's experiments/),
  # with a workdir: checkpoints written by the installed package and restored into a fresh model.
  import optax
  from flax import nnx

  from jaxconv import training
  from jaxconv.models import LeNet

  train_x, train_y = data.load_mnist(split="train")
  scale = lambda a: (a[:2048].astype(np.float32) / 255.0 - 0.13) / 0.31
  model = LeNet(rngs=nnx.Rngs(0))
  history = training.fit(
    model,
    optax.adam(3e-3),
    (scale(train_x), train_y[:2048]),
    epochs=1,
    test=(scale(images), labels[:2048]),
    batch_size=64,
    workdir=workdir,
  )
  row = history[-1]
  assert np.isfinite(row["train_loss"]) and row["test_accuracy"] > 0.5, row  # chance is 0.1
  restored = training.restore(LeNet(rngs=nnx.Rngs(1)), workdir)
  restored.eval()
  accuracy = float((restored(scale(images)).argmax(-1) == labels[:2048]).mean())
  assert abs(accuracy - row["test_accuracy"]) < 1e-6, (accuracy, row)
  print(
    f"training: 1 epoch of 2048 images, test accuracy {row['test_accuracy']:.3f} (restored: {accuracy:.3f}), "
    f"train loss {row['train_loss']:.3f}"
  )
  print(f"wheel check passed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  if len(sys.argv) > 1:
    main(Path(sys.argv[1]))
  else:
    with tempfile.TemporaryDirectory() as tmp:
      main(Path(tmp) / "run")
