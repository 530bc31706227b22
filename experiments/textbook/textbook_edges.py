"""Edge detection: the 6x8 black-and-white image with the kernel [1, -1] (vertical edges) and its
transpose (which finds nothing), then Sobel kernels on a real MNIST digit.

  python experiments/textbook/textbook_edges.py [--digit 0] [--data_dir DIR] [--outdir runs/textbook/edges]
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from textbook import EDGE_KERNEL, SOBEL_X, SOBEL_Y, edge_image
from textbook_common import define_outdir, heatmap, plt, save

import jaxconv as jc
from jaxconv.data import MNIST_DIR, load_mnist

OUTDIR = define_outdir("edges")
DIGIT = flags.DEFINE_integer("digit", 0, "Index of the MNIST test image to filter.")
DATA_DIR = flags.DEFINE_string("data_dir", str(MNIST_DIR), "Folder of the MNIST IDX files.")


def main(argv: list[str]) -> None:
  """Print the edge maps of the black-and-white image and draw them with a digit's Sobel edges."""
  del argv
  x = edge_image()
  y, y_t = np.asarray(jc.correlate(x, EDGE_KERNEL)), np.asarray(jc.correlate(x, EDGE_KERNEL.T))
  print("X (1 white, 0 black):\n", x.astype(int))
  print("Y = X correlated with [1, -1]: 1 at white-to-black, -1 at black-to-white:\n", y.astype(int))
  print(f"X correlated with the transpose [[1], [-1]]: {y_t.shape}, all zero: {not y_t.any()}")

  images, labels = load_mnist(DATA_DIR.value, "test")
  digit = images[DIGIT.value, ..., 0] / 255.0
  gx, gy = (np.asarray(jc.correlate(digit, k, "same")) for k in (SOBEL_X, SOBEL_Y))
  magnitude = np.hypot(gx, gy)
  print(
    f"MNIST test digit {DIGIT.value} (label {labels[DIGIT.value]}): "
    f"|Sobel x| mean {np.abs(gx).mean():.3f}, |Sobel y| mean {np.abs(gy).mean():.3f}, "
    f"gradient magnitude max {magnitude.max():.2f}"
  )

  fig, axes = plt.subplots(2, 4, figsize=(15, 7), layout="constrained")
  heatmap(axes[0, 0], x, "X: 6x8, black columns 2-5", cmap="gray")
  heatmap(axes[0, 1], y, "X * [1, -1]: vertical edges", cmap="RdBu_r", vmin=-1, vmax=1)
  heatmap(axes[0, 2], y_t, "X * [1, -1]^T: finds nothing", cmap="RdBu_r", vmin=-1, vmax=1)
  heatmap(axes[0, 3], EDGE_KERNEL, "kernel [1, -1]", cmap="RdBu_r", vmin=-1, vmax=1)
  heatmap(axes[1, 0], digit, f"MNIST digit (label {labels[DIGIT.value]})", cmap="gray", annotate=False)
  limit = np.abs(np.stack([gx, gy])).max()
  heatmap(axes[1, 1], gx, "Sobel x: vertical edges", cmap="RdBu_r", vmin=-limit, vmax=limit, annotate=False)
  heatmap(axes[1, 2], gy, "Sobel y: horizontal edges", cmap="RdBu_r", vmin=-limit, vmax=limit, annotate=False)
  heatmap(axes[1, 3], magnitude, "gradient magnitude", cmap="magma", annotate=False)
  fig.suptitle("Edge detection by cross-correlation (red: positive, blue: negative)")
  save(fig, OUTDIR.value, "edges")


if __name__ == "__main__":
  app.run(main)
