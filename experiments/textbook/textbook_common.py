"""Shared by the textbook_* experiments: the --outdir flag, annotated heatmaps, saving figures."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # the scripts only write files; no display needed

import matplotlib.pyplot as plt
import numpy as np
from absl import flags


def define_outdir(name: str) -> flags.FlagHolder:
  """The ``--outdir`` flag of the experiment ``name``; defaults to ``runs/textbook/<name>``."""
  return flags.DEFINE_string("outdir", f"runs/textbook/{name}", "Folder the figures are written to.")


def heatmap(ax, array, title: str = "", *, annotate: bool = True, cmap: str = "viridis", vmin=None, vmax=None) -> None:
  """Draw a 2-D ``array`` as coloured cells on ``ax``, each value written in its cell when ``annotate``.

  NaN is blank.
  """
  array = np.asarray(array, np.float64)
  image = ax.imshow(array, cmap=cmap, vmin=vmin, vmax=vmax)
  if annotate:
    for (i, j), v in np.ndenumerate(array):
      if not np.isfinite(v):
        continue  # NaN cells are blank
      red, green, blue, _ = image.cmap(image.norm(v))
      # Black text on light cells, white on dark ones, whatever the colour map.
      light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
      ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=9, color="black" if light else "white")
  ax.set_title(title, fontsize=10)
  ax.set_xticks([])
  ax.set_yticks([])


def save(fig, outdir: str, name: str) -> pathlib.Path:
  """Write ``fig`` to ``outdir/name.png``, close it and print where it went."""
  path = pathlib.Path(outdir) / f"{name}.png"
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  print(f"wrote {path}")
  return path
