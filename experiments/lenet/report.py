"""What a run shows and leaves behind: the progress bar, ``metrics.jsonl`` (strict JSON), ``curves.png``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from jaxconv import parallel
from jaxconv.training.records import METRICS_FILE, append_metrics, metrics_current, strict_record, write_metrics

__all__ = [
  "CURVES_FILE",
  "METRICS_FILE",
  "Progress",
  "append_metrics",
  "metrics_current",
  "plot_curves",
  "strict_record",
  "write_metrics",
]

CURVES_FILE = "curves.png"


class Progress:
  """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

  def __init__(self, total: int, label: str, enabled: bool | None = None):
    self.total, self.label, self.start = total, label, time.perf_counter()
    self.enabled = sys.stderr.isatty() and parallel.is_main_process() if enabled is None else enabled

  def update(self, done: int, note: str = "") -> None:
    """Redraw with ``done`` of ``total`` units finished."""
    if not self.enabled:
      return
    width = 30
    filled = int(width * done / max(self.total, 1))
    elapsed = time.perf_counter() - self.start
    sys.stderr.write(
      f"\r{self.label} |{'#' * filled}{'.' * (width - filled)}| {done}/{self.total} {elapsed:5.1f}s {note}\x1b[K"
    )
    sys.stderr.flush()

  def close(self) -> None:
    """End the bar's line."""
    if self.enabled:
      sys.stderr.write("\n")
      sys.stderr.flush()


def plot_curves(history: list[dict], path: Path) -> None:
  """Loss and accuracy per epoch (train and test) as a PNG at ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = [r["epoch"] for r in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
  for split in ("train", "test"):
    ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], "o-", label=split)
    ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in history], "o-", label=split)
  ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
  ax_acc.set(
    xlabel="epoch",
    ylabel="%",
    title=f"accuracy (test: {100 * history[-1]['test_accuracy']:.2f}% at epoch {epochs[-1]})",
  )
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
