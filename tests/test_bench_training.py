"""The PyTorch twin of the benchmarks (experiments/lenet/torch_twin.py, bench_training.py): same weights, same warp."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from experiments import lenet
from experiments.lenet.torch_twin import torch_lenet, torch_params
from jaxconv.training import augment

torch = pytest.importorskip("torch")

_BENCH_PATH = Path(__file__).resolve().parent.parent / "experiments" / "bench_training.py"
_SPEC = importlib.util.spec_from_file_location("bench_training", _BENCH_PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def nchw(x: np.ndarray):
  return torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), order="C"))


def test_torch_lenet_with_copied_weights_gives_jaxconvs_logits(rng):
  model = lenet.create_model(default.get_config(), (28, 28, 1))
  _, params = nnx.split(model, nnx.Param)
  twin = torch_lenet()
  twin.load_state_dict({k: torch.from_numpy(v) for k, v in torch_params(params).items()})
  x = rng.standard_normal((3, 28, 28, 1)).astype(np.float32)
  np.testing.assert_allclose(twin(nchw(x)).detach().numpy(), np.asarray(model(jnp.asarray(x))), atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 12, 12, 1), (4, 9, 13, 2)])
def test_torch_affine_matches_augment_affine(rng, shape):
  x = rng.standard_normal(shape).astype(np.float32)
  matrices = (np.eye(2) + 0.2 * rng.standard_normal((4, 2, 2))).astype(np.float32)
  offsets = rng.uniform(-2, 2, (4, 2)).astype(np.float32)
  want = np.asarray(augment.affine(jnp.asarray(x), jnp.asarray(matrices), jnp.asarray(offsets)))
  got = bench.torch_affine(nchw(x), torch.from_numpy(matrices), torch.from_numpy(offsets)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_torch_augment_shifts_only_moves_whole_pixels(rng):
  x = rng.standard_normal((4, 10, 10, 1)).astype(np.float32)
  out = bench.torch_augment(nchw(x), {"max_shift": 2}, torch.Generator().manual_seed(0)).numpy()
  assert np.abs(out.reshape(-1, 1) - x.reshape(1, -1)).min(axis=1).max() < 1e-4  # every value is an input pixel
