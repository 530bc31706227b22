"""Padding modes on a 5x5 input with a 3x3 kernel at stride 1: the full/same/valid outputs, and
how often each input cell is used under each mode (without padding, boundary cells count less).

  python experiments/textbook_padding.py [--outdir runs/textbook/padding]
"""

from __future__ import annotations

import matplotlib.patches as mpatches
import numpy as np
from absl import app

import jaxconv as jc
from jaxconv import reference
from textbook_common import define_outdir, heatmap, plt, save

OUTDIR = define_outdir("padding")

SHAPE, KERNEL = (5, 5), (3, 3)
ORDER = ("full", "same", "valid")  # from the most padding to none
CANVAS = 7  # the "full" output's size: every panel is drawn centred on a canvas this big


def centred(array: np.ndarray) -> np.ndarray:
  """``array`` in the middle of a ``CANVAS x CANVAS`` NaN (blank) canvas, so all panels share one cell size."""
  canvas = np.full((CANVAS, CANVAS), np.nan)
  top, left = ((CANVAS - n) // 2 for n in array.shape)
  canvas[top : top + array.shape[0], left : left + array.shape[1]] = array
  return canvas


def main(argv: list[str]) -> None:
  """Print and draw the three modes' outputs and input usage counts."""
  del argv
  x, w = np.ones(SHAPE), np.ones(KERNEL)
  fig, axes = plt.subplots(2, 3, figsize=(11, 7.5))
  for column, mode in zip(axes.T, ORDER):
    # With an all-ones input and kernel, each output counts the real (non-pad) cells in its window.
    y = np.asarray(jc.correlate(x, w, mode))
    usage = reference.input_usage(SHAPE, KERNEL, mode)
    print(f"{mode}: output {y.shape}, input cells used {usage.min():g} (corner) to {usage.max():g} (centre) times")
    print(usage.astype(int))
    heatmap(column[0], centred(y), f'"{mode}": output {y.shape[0]}x{y.shape[1]}\n(real input cells per window)', cmap="Greens", vmin=0, vmax=9)
    heatmap(column[1], centred(usage), f'"{mode}": windows using each input cell\ncorner {usage[0, 0]:g} vs centre {usage[2, 2]:g}', cmap="Blues", vmin=0, vmax=9)
    for ax in column:
      # Where the 5x5 input lies; each output cell sits at the centre of its window.
      offset = (CANVAS - SHAPE[0]) / 2 - 0.5
      ax.add_patch(mpatches.Rectangle((offset, offset), *SHAPE, fill=False, edgecolor="black", linestyle="--"))
  fig.suptitle("5x5 input (dashed), 3x3 kernel, stride 1: zero padding lets boundary cells count as often as the centre")
  save(fig, OUTDIR.value, "padding")


if __name__ == "__main__":
  app.run(main)
