"""bench_training.py: the PyTorch twin (experiments/lenet/torch_twin.py) matches jaxconv; it runs without torch."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from experiments import lenet
from experiments.lenet.torch_twin import torch_lenet, torch_params
from jaxconv.training import augment

try:
  import torch
except ImportError:  # an optional benchmark dependency
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

ROOT = Path(__file__).resolve().parent.parent
_BENCH_PATH = ROOT / "experiments" / "bench_training.py"
_SPEC = importlib.util.spec_from_file_location("bench_training", _BENCH_PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def nchw(x: np.ndarray):
  return torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), order="C"))


@needs_torch
def test_torch_lenet_with_copied_weights_gives_jaxconvs_logits(rng):
  model = lenet.create_model(default.get_config(), (28, 28, 1))
  _, params = nnx.split(model, nnx.Param)
  twin = torch_lenet()
  twin.load_state_dict({k: torch.from_numpy(v) for k, v in torch_params(params).items()})
  x = rng.standard_normal((3, 28, 28, 1)).astype(np.float32)
  np.testing.assert_allclose(twin(nchw(x)).detach().numpy(), np.asarray(model(jnp.asarray(x))), atol=1e-4)


@needs_torch
@pytest.mark.parametrize("shape", [(4, 12, 12, 1), (4, 9, 13, 2)])
def test_torch_affine_matches_augment_affine(rng, shape):
  x = rng.standard_normal(shape).astype(np.float32)
  matrices = (np.eye(2) + 0.2 * rng.standard_normal((4, 2, 2))).astype(np.float32)
  offsets = rng.uniform(-2, 2, (4, 2)).astype(np.float32)
  want = np.asarray(augment.affine(jnp.asarray(x), jnp.asarray(matrices), jnp.asarray(offsets)))
  got = bench.torch_affine(nchw(x), torch.from_numpy(matrices), torch.from_numpy(offsets)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, atol=1e-4)


@needs_torch
def test_torch_augment_shifts_only_moves_whole_pixels(rng):
  x = rng.standard_normal((4, 10, 10, 1)).astype(np.float32)
  out = bench.torch_augment(nchw(x), {"max_shift": 2}, torch.Generator().manual_seed(0)).numpy()
  assert np.abs(out.reshape(-1, 1) - x.reshape(1, -1)).min(axis=1).max() < 1e-4  # every value is an input pixel


@pytest.mark.slow
def test_throughput_without_torch_names_the_kernel_and_claims_no_ratio(tmp_path):
  """``--notorch``: one epoch of the smoke config, the default kernel named "auto", no ratio printed or written."""
  out = tmp_path / "bench.json"
  cli = [sys.executable, str(_BENCH_PATH), "--config=configs/smoke.py", "--rounds=1", "--notorch", f"--out={out}"]
  proc = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "jaxconv impl=auto" in proc.stdout and "nan" not in proc.stdout
  # Strict JSON: no NaN standing for the missing ratios.
  results = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {out.name}"))
  assert "speedup_vs_torch" not in results and not any(k.startswith("torch") for k in results)
  row = results["jaxconv impl=auto"]
  assert len(row["images_per_second"]) == 1 and row["images_per_second"][0] > 0
  assert "median_ratio_vs_torch" not in row


def test_seeds_may_be_given_space_separated():
  argv = ["bench", "--time-to-accuracy", "0.99", "--seeds", "0", "1", "2", "--out", "f.json"]
  assert bench.join_list_flag(argv) == ["bench", "--time-to-accuracy", "0.99", "--seeds=0,1,2", "--out", "f.json"]
  assert bench.join_list_flag(["bench", "--seeds=3"]) == ["bench", "--seeds=3"]


def test_a_seed_where_torch_missed_the_target_counts_all_its_epochs():
  summary = {
    "jaxconv impl=auto": {"reached": True, "epochs": 2, "seconds": 4.0},
    "jaxconv impl=lax": {"reached": False, "epochs": 2, "seconds": 9.0},
    "torch 2.13.0 eager": {"reached": False, "epochs": 2, "seconds": 12.0},  # all its epochs
  }
  assert bench.seed_speedups(summary) == {"auto": 3.0, "lax": None}
  assert bench.seed_speedups({"jaxconv impl=auto": summary["jaxconv impl=auto"]}) == {}


@pytest.mark.slow
def test_time_to_accuracy_over_seeds_records_each_seed(tmp_path):
  """Two seeds of the smoke config without torch: per seed, epochs and seconds to the target."""
  out = tmp_path / "tta.json"
  cli = [sys.executable, str(_BENCH_PATH), "--config=configs/smoke.py", "--time-to-accuracy", "0.3"]
  cli += ["--seeds", "0", "1", "--notorch", f"--out={out}"]
  proc = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results["seeds"] == [0, 1] and set(results["per_seed"]) == {"0", "1"}
  for entry in results["per_seed"].values():
    run = entry["runs"]["jaxconv impl=auto"]
    assert run["reached"] and 1 <= run["epochs"] <= 2 and run["seconds"] > 0
  assert {"cpu", "isa", "commit", "command", "load_average"} <= set(results["env"])
