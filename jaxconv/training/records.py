"""A run's record of its epochs: ``metrics.jsonl``, one strict JSON object per epoch (no ``NaN`` tokens)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["METRICS_FILE", "append_metrics", "metrics_current", "strict_record", "write_metrics"]

METRICS_FILE = "metrics.jsonl"


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
