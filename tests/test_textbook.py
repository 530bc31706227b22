"""The claims the textbook_* experiments illustrate, checked on the library functions they use."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import jaxconv as jc
from experiments.textbook.textbook import (
  EDGE_KERNEL,
  SOBEL_X,
  SOBEL_Y,
  edge_image,
  edge_maps,
  layer_outputs,
  learn_kernel,
  pool_image,
  retained,
)
from jaxconv import receptive_field as rf
from jaxconv import reference
from jaxconv.models import LeNet

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_edge_kernel_finds_the_vertical_edges_and_its_transpose_none():
  x = edge_image()
  y = np.asarray(jc.correlate(x, EDGE_KERNEL))
  expected = np.zeros((6, 7))
  expected[:, 1], expected[:, 5] = 1.0, -1.0  # white-to-black, then black-to-white
  np.testing.assert_array_equal(y, expected)
  np.testing.assert_array_equal(y, reference.correlate2d(x, EDGE_KERNEL))
  np.testing.assert_array_equal(np.asarray(jc.correlate(x, EDGE_KERNEL.T)), np.zeros((5, 8)))
  np.testing.assert_array_equal(np.asarray(jc.correlate(x.T, EDGE_KERNEL.T)), expected.T)


def test_sobel_kernels_separate_vertical_from_horizontal_edges():
  x = edge_image()
  vertical, horizontal = np.asarray(jc.correlate(x, SOBEL_X)), np.asarray(jc.correlate(x, SOBEL_Y))
  assert (vertical[:, 0] == 4).all() and (vertical[:, 4] == -4).all() and not vertical[:, 2].any()
  assert not horizontal.any()
  np.testing.assert_array_equal(np.asarray(jc.correlate(x.T, SOBEL_Y)), vertical.T)


def test_edge_maps_split_the_edge_signs():
  maps = edge_maps(edge_image())
  assert maps.shape == (6, 7, 2) and maps.min() == 0
  assert maps[:, 1, 0].all() and maps[:, 5, 1].all() and maps.sum() == 12


@pytest.fixture(scope="module")
def learned():
  """The edge kernel learned by a correlation layer and by a convolution layer (one scan each)."""
  x = edge_image()
  y = np.asarray(jc.correlate(x, EDGE_KERNEL))
  return x, {op: learn_kernel(x, y, (1, 2), op, steps=30) for op in (jc.correlate, jc.convolve)}


def test_learned_kernel_approaches_the_edge_kernel(learned):
  _, runs = learned
  kernels, losses = runs[jc.correlate]
  assert kernels.shape == (31, 1, 2) and losses.shape == (30,)
  np.testing.assert_allclose(kernels[-1], EDGE_KERNEL, atol=0.01)
  assert losses[-1] < 1e-5 * losses[0]
  assert np.abs(kernels[-1] - EDGE_KERNEL).max() < np.abs(kernels[0] - EDGE_KERNEL).max()


def test_convolution_layer_learns_the_flipped_kernel_with_equal_outputs(learned):
  x, runs = learned
  k_corr, k_conv = runs[jc.correlate][0][-1], runs[jc.convolve][0][-1]
  np.testing.assert_allclose(k_conv, np.flip(EDGE_KERNEL), atol=0.01)
  np.testing.assert_allclose(k_conv, np.flip(k_corr), atol=1e-4)
  np.testing.assert_allclose(jc.convolve(x, k_conv), jc.correlate(x, k_corr), atol=1e-4)


def test_learn_kernel_rejects_no_steps():
  with pytest.raises(ValueError, match="steps"):
    learn_kernel(np.ones((3, 3)), np.ones((3, 2)), (1, 2), jc.correlate, steps=0)


def test_multi_input_channels_sum_the_per_channel_correlations():
  x = np.stack([np.arange(9.0).reshape(3, 3), np.arange(1.0, 10.0).reshape(3, 3)], axis=-1)
  k = np.stack([np.arange(4.0).reshape(2, 2), np.arange(1.0, 5.0).reshape(2, 2)], axis=-1)
  y = np.asarray(jc.conv(x[None], k[..., None]))[0, ..., 0]
  np.testing.assert_array_equal(y, [[56.0, 72.0], [104.0, 120.0]])
  np.testing.assert_array_equal(y, sum(reference.correlate2d(x[..., c], k[..., c]) for c in range(2)))
  k3 = np.stack([k, k + 1, k + 2], axis=-1)
  np.testing.assert_allclose(np.asarray(jc.conv(x[None], k3))[0], reference.correlate2d_channels(x, k3))


def test_1x1_conv_is_a_dense_layer_per_pixel(rng):
  x, w, b = rng.normal(size=(2, 5, 4, 3)), rng.normal(size=(3, 6)), rng.normal(size=6)
  np.testing.assert_allclose(jc.conv(x, w[None, None], b), x @ w + b, atol=1e-5)
  # With a stride it is the dense layer on the subsampled pixels.
  np.testing.assert_allclose(jc.conv(x, w[None, None], stride=2), x[:, ::2, ::2] @ w, atol=1e-5)


def test_pooling_textbook_examples():
  x3, x4 = np.arange(9.0).reshape(3, 3), np.arange(16.0).reshape(4, 4)
  np.testing.assert_array_equal(pool_image(jc.max_pool, x3, 2, 1), [[4.0, 5.0], [7.0, 8.0]])
  np.testing.assert_array_equal(pool_image(jc.avg_pool, x3, 2, 1), [[2.0, 3.0], [5.0, 6.0]])
  np.testing.assert_array_equal(pool_image(jc.max_pool, x4, 3), [[10.0]])
  np.testing.assert_array_equal(pool_image(jc.max_pool, x4, 3, 2, 1), [[5.0, 7.0], [13.0, 15.0]])
  np.testing.assert_array_equal(pool_image(jc.max_pool, x4, (2, 3), (2, 3), (0, 1)), [[5.0, 7.0], [13.0, 15.0]])
  two = pool_image(jc.max_pool, np.stack([x4, x4 + 1], axis=-1), 3, 2, 1)
  np.testing.assert_array_equal(two[..., 1], two[..., 0] + 1)


def test_max_pooling_tolerates_a_one_pixel_shift():
  edges = [edge_maps(edge_image(width=10, dark=(2 + s, 6 + s))) for s in range(3)]
  pooled = [pool_image(jc.max_pool, e, 2, 1) for e in edges]
  assert retained(edges[0], edges[1]) == 0.0  # raw detections all move
  assert retained(pooled[0], pooled[1]) == 0.5  # half survive a 2x2 max pool
  assert retained(pooled[0], pooled[2]) == 0.0  # but not a 2-pixel shift
  wide = [pool_image(jc.max_pool, e, 3, 1) for e in edges]
  assert retained(wide[0], wide[2]) > 0.0  # a 3x3 window tolerates it


def test_retained_needs_detections():
  with pytest.raises(ValueError, match="non-zero"):
    retained(np.zeros(3), np.ones(3))


def test_edge_image_rejects_bad_columns():
  with pytest.raises(ValueError, match="dark"):
    edge_image(width=8, dark=(6, 9))


@pytest.mark.slow  # 5 s on a 2-core AVX2 EPYC
def test_layer_outputs_walk_the_feature_stack(rng):
  model = LeNet(rngs=nnx.Rngs(0))
  x = rng.normal(size=(2, 28, 28, 1)).astype(np.float32)
  outputs = layer_outputs(model, x)
  assert [y.shape[1:3] for y in outputs] == [f.shape for f in rf.walk(model, (28, 28))]
  np.testing.assert_allclose(outputs[-1], model.features(x), atol=1e-6)
  assert (np.asarray(outputs[1]) >= 0).all()  # the modern variant's ReLU


@pytest.mark.slow
def test_pooling_script_smoke(tmp_path):
  """One script end to end: it prints its result and writes its figure where --outdir says."""
  out = subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "textbook" / "textbook_pooling.py"), f"--outdir={tmp_path}"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    check=True,
  ).stdout
  assert "[[4.0, 5.0], [7.0, 8.0]]" in out
  assert (tmp_path / "pooling.png").stat().st_size > 10_000
