"""Smoke test of experiments/bench/profile_step.py: one column per kernel and dtype, every part timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_float32_and_bfloat16_columns(tmp_path):
  out = tmp_path / "profile.json"
  cli = [
    sys.executable,
    "experiments/bench/profile_step.py",
    "--impl=lax",
    "--dtype=float32",
    "--dtype=bfloat16",
    "--notorch",
    "--notrace",
    "--repeats=2",
    "--batch_size=8",
    f"--out={out}",
  ]
  proc = subprocess.run(
    cli, capture_output=True, text=True, check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  ms = json.loads(out.read_text())["ms"]
  assert list(ms) == ["jaxconv lax", "jaxconv lax bfloat16"]
  for column in ms.values():
    parts = ("conv1", "relu+pool1", "conv2", "relu+pool2", "classifier", "loss", "adam", "step")
    assert all(column[part] > 0 for part in parts), column
  assert "jaxconv lax bfloat16" in proc.stdout
