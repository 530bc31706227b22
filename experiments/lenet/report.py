"""What a run shows and leaves behind: the progress bar, ``metrics.jsonl`` (strict JSON), ``curves.png``."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from jaxconv import parallel

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

METRICS_FILE = "metrics.jsonl"
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


def strict_record(record: dict[str, Any]) -> dict[str, Any]:
  """``record`` with NaN and infinite floats as None, so that it is strict JSON (no ``NaN`` tokens)."""
  return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _lines(history: list[dict]) -> str:
  """One strict JSON line per record."""
  return "".join(json.dumps(strict_record(record), allow_nan=False) + "\n" for record in history)


def metrics_current(path: Path, history: list[dict]) -> bool:
  """Whether ``path`` holds exactly the JSON lines of ``history``."""
  return path.is_file() and path.read_text() == _lines(history)


def write_metrics(path: Path, history: list[dict]) -> bool:
  """Make ``path`` hold one JSON line per epoch of ``history``, replacing it atomically; False if it already did.

  Nothing is written when the file is already right, so a finished run needs no write access.
  """
  if metrics_current(path, history):
    return False
  text = _lines(history)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(text)
  tmp.replace(path)
  return True


def append_metrics(path: Path, record: dict) -> None:
  """Append one epoch's JSON line to ``path``."""
  with path.open("a") as f:
    f.write(_lines([record]))


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
