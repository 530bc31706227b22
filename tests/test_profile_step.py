"""Smoke test of experiments/bench/profile_step.py: one column per kernel and dtype, every part timed."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_float32_and_bfloat16_columns(tmp_path, run_script):
  out = tmp_path / "profile.json"
  args = ["--impl=lax", "--dtype=float32", "--dtype=bfloat16", "--notorch", "--notrace", "--repeats=2"]
  proc = run_script("experiments/bench/profile_step.py", *args, "--batch_size=8", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  ms = json.loads(out.read_text())["ms"]
  assert list(ms) == ["jaxconv lax", "jaxconv lax bfloat16"]
  parts = ("conv1", "relu+pool1", "conv2", "relu+pool2", "classifier", "loss", "adam", "step")
  for column in ms.values():
    assert all(column[part] > 0 for part in parts), column
  assert "jaxconv lax bfloat16" in proc.stdout
