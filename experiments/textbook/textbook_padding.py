"""Padding on a 5x5 input with a 3x3 kernel at stride 1: the full/same/valid outputs, and how often
each input cell is used under each (without padding, boundary cells count less); then the five
padding_mode fills (zeros, reflect, replicate, circular, symmetric) on one image, and what a box
blur makes of each at the border.

  python experiments/textbook/textbook_padding.py [--outdir runs/textbook/padding]
"""

from __future__ import annotations

import matplotlib.patches as mpatches
import numpy as np
from absl import app
from textbook_common import define_outdir, heatmap, plt, save

import jaxconv as jc
from jaxconv import reference
from jaxconv.geometry import PADDING_MODES

OUTDIR = define_outdir("padding")

SHAPE, KERNEL = (5, 5), (3, 3)
ORDER = ("full", "same", "valid")  # from the most padding to none
MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")
MODE_PAD, BLUR = 4, 5  # pad of the mode panels; the box blur's size
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
    heatmap(
      column[0],
      centred(y),
      f'"{mode}": output {y.shape[0]}x{y.shape[1]}\n(real input cells per window)',
      cmap="Greens",
      vmin=0,
      vmax=9,
    )
    heatmap(
      column[1],
      centred(usage),
      f'"{mode}": windows using each input cell\ncorner {usage[0, 0]:g} vs centre {usage[2, 2]:g}',
      cmap="Blues",
      vmin=0,
      vmax=9,
    )
    for ax in column:
      # Where the 5x5 input lies; each output cell sits at the centre of its window.
      offset = (CANVAS - SHAPE[0]) / 2 - 0.5
      ax.add_patch(mpatches.Rectangle((offset, offset), *SHAPE, fill=False, edgecolor="black", linestyle="--"))
  fig.suptitle(
    "5x5 input (dashed), 3x3 kernel, stride 1: zero padding lets boundary cells count as often as the centre"
  )
  save(fig, OUTDIR.value, "padding")
  draw_modes()


def mode_image() -> np.ndarray:
  """An 8x8 test image whose four borders differ: a ramp, a bright block at the top left, a dark column at the right."""
  image = np.add.outer(np.arange(8.0), np.arange(8.0)) / 14
  image[:3, :2] = 1.0
  image[:, -1] = 0.1
  return image


def padded(image: np.ndarray, mode: str) -> np.ndarray:
  """``image`` padded by ``MODE_PAD`` on every side as ``padding_mode=mode`` fills it.

  That is, the output of a 1x1 identity kernel.
  """
  return np.asarray(jc.correlate(image, np.ones((1, 1)), padding=MODE_PAD, padding_mode=mode))


def draw_modes() -> None:
  """The five padding modes on one image (top) and the "same" box blur of each (bottom)."""
  image = mode_image()
  fig, axes = plt.subplots(2, len(MODES), figsize=(3.2 * len(MODES), 6.8))
  for column, mode in zip(axes.T, MODES):
    filled = padded(image, mode)
    blurred = np.asarray(jc.convolve(image, np.full((BLUR, BLUR), 1 / BLUR**2), "same", padding_mode=mode))
    print(f"{mode}: padded {filled.shape}, blurred corner {blurred[0, 0]:.3f} (image corner {image[0, 0]:.3f})")
    heatmap(
      column[0],
      filled,
      f'padding_mode="{mode}"\n(numpy.pad "{PADDING_MODES[mode]}"), pad {MODE_PAD}',
      annotate=False,
      cmap="magma",
      vmin=0,
      vmax=1,
    )
    column[0].add_patch(
      mpatches.Rectangle(
        (MODE_PAD - 0.5, MODE_PAD - 0.5), *image.shape, fill=False, edgecolor="cyan", linestyle="--", linewidth=2
      )
    )
    heatmap(
      column[1],
      blurred,
      f'{BLUR}x{BLUR} box blur, "same"\ncorner {blurred[0, 0]:.2f}',
      annotate=False,
      cmap="magma",
      vmin=0,
      vmax=1,
    )
  fig.suptitle("One 8x8 image (dashed) in the five padding modes, and what each does to a blur at the border")
  save(fig, OUTDIR.value, "padding_modes")


if __name__ == "__main__":
  app.run(main)
