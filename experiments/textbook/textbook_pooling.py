"""Pooling: max and average pooling on the textbook's 3x3 example, with padding and stride, on
several channels, and the translation-tolerance argument on a shifted edge image.

  python experiments/textbook/textbook_pooling.py [--outdir runs/textbook/pooling]
"""

from __future__ import annotations

import matplotlib.patches as mpatches
import numpy as np
from absl import app
from textbook import edge_image, edge_maps, pool_image, retained
from textbook_common import define_outdir, heatmap, plt, save

import jaxconv as jc

OUTDIR = define_outdir("pooling")

SHIFTS = (0, 1, 2)
WIDTH = 10  # wider than the textbook's 8, so that both edges stay inside the image at every shift


def textbook_examples() -> None:
  """Print the textbook's pooling examples: 3x3, padding and stride, two channels."""
  x3 = np.arange(9.0).reshape(3, 3)
  print(
    "3x3 arange, 2x2 window, stride 1: max",
    pool_image(jc.max_pool, x3, 2, 1).tolist(),
    " avg",
    pool_image(jc.avg_pool, x3, 2, 1).tolist(),
  )
  x4 = np.arange(16.0).reshape(4, 4)
  print("4x4 arange, 3x3 window (stride 3 by default):", pool_image(jc.max_pool, x4, 3).tolist())
  print("4x4 arange, 3x3 window, padding 1, stride 2:", pool_image(jc.max_pool, x4, 3, 2, 1).tolist())
  print(
    "4x4 arange, 2x3 window, padding (0, 1), stride (2, 3):",
    pool_image(jc.max_pool, x4, (2, 3), (2, 3), (0, 1)).tolist(),
  )
  two = pool_image(jc.max_pool, np.stack([x4, x4 + 1], axis=-1), 3, 2, 1)
  print(
    "channels (X, X + 1), 3x3 window, padding 1, stride 2: channel 0",
    two[..., 0].tolist(),
    " channel 1",
    two[..., 1].tolist(),
  )


def tolerance_table() -> dict[int, np.ndarray]:
  """Print, per shift of the edge image, how many edge detections survive, raw and after max pooling."""
  edges = {shift: edge_maps(edge_image(width=WIDTH, dark=(2 + shift, 6 + shift))) for shift in SHIFTS}
  print("shift | detections kept: raw | max pool 2x2 stride 1 | max pool 3x3 stride 1")
  for shift in SHIFTS:
    kept = [retained(edges[0], edges[shift])] + [
      retained(pool_image(jc.max_pool, edges[0], k, 1), pool_image(jc.max_pool, edges[shift], k, 1)) for k in (2, 3)
    ]
    print(f"{shift:5d} | {kept[0]:20.2f} | {kept[1]:21.2f} | {kept[2]:21.2f}")
  return edges


def main(argv: list[str]) -> None:
  """Print the pooling examples and the shift table; draw the examples and the shifted edge maps."""
  del argv
  textbook_examples()
  edges = tolerance_table()

  fig, axes = plt.subplots(3, 4, figsize=(14, 9), layout="constrained")
  x3 = np.arange(9.0).reshape(3, 3)
  heatmap(axes[0, 0], x3, "input 3x3", cmap="Blues")
  heatmap(axes[0, 1], pool_image(jc.max_pool, x3, 2, 1), "max pool 2x2, stride 1", cmap="Greens", vmin=0, vmax=8)
  heatmap(axes[0, 2], pool_image(jc.avg_pool, x3, 2, 1), "avg pool 2x2, stride 1", cmap="Greens", vmin=0, vmax=8)
  axes[0, 3].axis("off")
  pooled = {shift: pool_image(jc.max_pool, edges[shift], 2, 1) for shift in (0, 1)}
  for row, shift in zip(axes[1:], (0, 1)):
    image = edge_image(width=WIDTH, dark=(2 + shift, 6 + shift))
    heatmap(row[0], image, f"edge image, shifted {shift} px" if shift else "edge image", cmap="gray", annotate=False)
    heatmap(row[1], edges[shift][..., 0], "white-to-black edges (K=[1,-1])", cmap="Greens", vmin=0, vmax=1)
    heatmap(row[2], pooled[shift][..., 0], "white-to-black, max pool 2x2 stride 1", cmap="Greens", vmin=0, vmax=1)
    heatmap(row[3], pooled[shift][..., 1], "black-to-white, max pool 2x2 stride 1", cmap="Greens", vmin=0, vmax=1)
  # Cells where the pooled maps of the original and the shifted image both fire.
  for channel, ax in ((0, axes[2, 2]), (1, axes[2, 3])):
    for i, j in zip(*np.nonzero((pooled[0][..., channel] > 0) & (pooled[1][..., channel] > 0))):
      ax.add_patch(mpatches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
  kept_raw, kept_pooled = retained(edges[0], edges[1]), retained(pooled[0], pooled[1])
  axes[0, 3].text(
    0.0,
    0.5,
    (
      f"Shift the image by 1 pixel:\nedge detections kept\n  raw: {kept_raw:.0%}\n"
      f"  after max pool 2x2: {kept_pooled:.0%}\n  (red: fire in both)"
    ),
    fontsize=12,
    va="center",
  )
  fig.suptitle("Pooling: the textbook's 3x3 example, and tolerance to a 1-pixel shift of the edge image")
  save(fig, OUTDIR.value, "pooling")


if __name__ == "__main__":
  app.run(main)
