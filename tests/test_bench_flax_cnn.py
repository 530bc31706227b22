"""Smoke test of experiments/bench/bench_flax_cnn.py: one round on 512 images, JSON written, trainers agree."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_one_round_on_512_images(tmp_path, run_script):
  out = tmp_path / "bench.json"
  args = ["--rounds=1", "--train-size=512", "--test-size=256", "--impl=auto", f"--out={out}"]
  proc = run_script("experiments/bench/bench_flax_cnn.py", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results["images_per_epoch"] == 512
  flax, mine = results["trainers"]["flax default (lax)"], results["trainers"]["jaxconv impl=auto"]
  assert mine["impl"] == "auto" and flax["impl"] is None
  assert (
    len(mine["images_per_second"]) == 1 and mine["median_images_per_second"] > 0 and mine["median_ratio_vs_flax"] > 0
  )
  # Same parameters, same batches, the same convolution up to rounding: the same training.
  assert abs(mine["train_loss_per_epoch"][-1] - flax["train_loss_per_epoch"][-1]) < 1e-3
  assert "vs flax" in proc.stdout
