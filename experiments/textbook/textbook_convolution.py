"""Discrete convolution from first principles: the loop versions against numpy, scipy and jaxconv,
and the output-size formula ``floor((n + 2p - m) / s) + 1`` on a table of (n, m, p, s).

  python experiments/textbook/textbook_convolution.py [--outdir runs/textbook/convolution]
"""

from __future__ import annotations

import matplotlib.patches as mpatches
import numpy as np
import scipy.signal
from absl import app
from textbook_common import define_outdir, heatmap, plt, save

import jaxconv as jc
from jaxconv import reference
from jaxconv.geometry import output_size

OUTDIR = define_outdir("convolution")

# (n, m, p, s): input length, kernel length, padding on each side, stride.
SIZE_TABLE = [
  (5, 3, 0, 1),
  (5, 3, 1, 1),
  (5, 3, 2, 1),
  (5, 3, 0, 2),
  (5, 3, 1, 2),
  (8, 3, 1, 3),
  (7, 4, 0, 1),
  (7, 4, 1, 2),
  (6, 2, 0, 2),
  (4, 4, 3, 1),
]


def compare_1d() -> None:
  """The 1-D loop convolution against np.convolve and jc.convolve in every padding mode."""
  x, w = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([1.0, 0.5, -1.0])
  for mode in ("full", "same", "valid"):
    loop = reference.convolve1d(x, w, mode)
    print(
      f"1-D {mode:5s} loop {loop}  np.convolve {np.convolve(x, w, mode)}  "
      f"jc.convolve {np.asarray(jc.convolve(x, w, mode))}"
    )


def compare_2d() -> None:
  """The 2-D loop correlation on the textbook's example, and the loop convolution against scipy and jc."""
  x, k = np.arange(9.0).reshape(3, 3), np.arange(4.0).reshape(2, 2)
  print("2-D correlation of arange(9).reshape(3, 3) with arange(4).reshape(2, 2):\n", reference.correlate2d(x, k))
  image, kernel = np.random.default_rng(0).normal(size=(6, 7)), np.random.default_rng(1).normal(size=(3, 2))
  for mode in ("full", "same", "valid"):
    loop = reference.convolve2d(image, kernel, mode)
    err_scipy = np.abs(loop - scipy.signal.convolve2d(image, kernel, mode)).max()
    err_jc = np.abs(loop - np.asarray(jc.convolve(image, kernel, mode))).max()
    print(
      f"2-D {mode:5s} {loop.shape}: max |loop - scipy.convolve2d| = {err_scipy:.1e}, "
      f"max |loop - jc.convolve| = {err_jc:.1e}"
    )


def size_table() -> None:
  """The output-size formula next to the length of the loop's output, per (n, m, p, s)."""
  print(f"{'n':>3} {'m':>3} {'p':>3} {'s':>3} | formula | loop")
  for n, m, p, s in SIZE_TABLE:
    loop = len(reference.correlate1d(np.ones(n), np.ones(m), p, s))
    print(f"{n:3d} {m:3d} {p:3d} {s:3d} | {output_size(n, m, (p, p), s):7d} | {loop:4d}")


def draw_example(axes, p: int, s: int) -> None:
  """One row of the figure: the padded input with the first window outlined, the kernel, the output."""
  x, k = np.arange(9.0).reshape(3, 3), np.arange(4.0).reshape(2, 2)
  y = reference.correlate2d(x, k, p, s)
  heatmap(axes[0], reference.pad(x, p, k.shape), f"input 3x3, padding p={p}", cmap="Blues", vmax=12)
  heatmap(axes[1], k, "kernel 2x2", cmap="Oranges", vmax=5)
  heatmap(axes[2], y, f"output {y.shape[0]}x{y.shape[1]} (stride s={s})", cmap="Greens", vmax=1.3 * y.max())
  for ax, size in ((axes[0], 2), (axes[2], 1)):
    ax.add_patch(mpatches.Rectangle((-0.5, -0.5), size, size, fill=False, edgecolor="red", linewidth=2.5))
  # The real input inside its zero padding.
  axes[0].add_patch(mpatches.Rectangle((p - 0.5, p - 0.5), 3, 3, fill=False, edgecolor="black", linestyle="--"))
  axes[0].set_ylabel(f"p={p}, s={s}")


def main(argv: list[str]) -> None:
  """Compare the loops with numpy, scipy and jaxconv, print the size table, draw the worked example."""
  del argv
  compare_1d()
  compare_2d()
  size_table()
  cases = [(0, 1), (1, 1), (1, 2)]
  fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3.2 * len(cases)), gridspec_kw={"width_ratios": [5, 2, 4]})
  for row, (p, s) in zip(axes, cases):
    draw_example(row, p, s)
  fig.suptitle("2-D cross-correlation: the red window's sum of products is the red output cell")
  save(fig, OUTDIR.value, "convolution")


if __name__ == "__main__":
  app.run(main)
