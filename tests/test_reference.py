"""The naive loop references against numpy, scipy, jax.grad and the fast jaxconv functions."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

import jaxconv as jc
from jaxconv import reference
from jaxconv.geometry import output_size

MODES = ("full", "same", "valid")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("m", [3, 4])
def test_1d_loops_equal_numpy(rng, mode, m):
  x, w = rng.normal(size=9), rng.normal(size=m)
  np.testing.assert_allclose(reference.convolve1d(x, w, mode), np.convolve(x, w, mode), atol=1e-12)
  np.testing.assert_allclose(reference.correlate1d(x, w, mode), np.correlate(x, w, mode), atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_2d_loops_equal_scipy(rng, mode):
  x, w = rng.normal(size=(6, 7)), rng.normal(size=(3, 2))
  np.testing.assert_allclose(reference.convolve2d(x, w, mode), scipy.signal.convolve2d(x, w, mode), atol=1e-12)
  # Not scipy.signal.correlate2d: for even kernels its "same" centres differently from
  # scipy.signal.correlate, which is the contract jc.correlate and the loops follow.
  np.testing.assert_allclose(reference.correlate2d(x, w, mode), scipy.signal.correlate(x, w, mode), atol=1e-12)


def test_textbook_2d_example():
  y = reference.correlate2d(np.arange(9.0).reshape(3, 3), np.arange(4.0).reshape(2, 2))
  np.testing.assert_array_equal(y, [[19.0, 25.0], [37.0, 43.0]])


@pytest.mark.parametrize("padding, stride", [(0, 1), (1, 2), (2, 3), ((0, 2), 2), ("same", 2), ("full", 3)])
def test_loops_equal_jaxconv_with_padding_and_stride(rng, padding, stride):
  """padding: an int or mode for every axis, or one (lo, hi) pair repeated on every axis."""
  pad1, pad2 = ((padding,), (padding, padding)) if isinstance(padding, tuple) else (padding, padding)
  x1, w1 = rng.normal(size=11), rng.normal(size=3)
  np.testing.assert_allclose(reference.correlate1d(x1, w1, pad1, stride), jc.correlate(x1, w1, pad1, stride), atol=1e-5)
  np.testing.assert_allclose(reference.convolve1d(x1, w1, pad1, stride), jc.convolve(x1, w1, pad1, stride), atol=1e-5)
  x2, w2 = rng.normal(size=(7, 8)), rng.normal(size=(3, 2))
  np.testing.assert_allclose(reference.correlate2d(x2, w2, pad2, stride), jc.correlate(x2, w2, pad2, stride), atol=1e-5)
  np.testing.assert_allclose(reference.convolve2d(x2, w2, pad2, stride), jc.convolve(x2, w2, pad2, stride), atol=1e-5)


def test_output_size_formula_matches_the_loops():
  """floor((n + 2p - m) / s) + 1 is the length of the loop's output, over a table of (n, m, p, s)."""
  checked = 0
  for n, m, p, s in itertools.product(range(1, 9), range(1, 6), range(0, 4), range(1, 4)):
    if n + 2 * p < m:
      with pytest.raises(ValueError, match="larger than the padded input"):
        reference.correlate1d(np.ones(n), np.ones(m), p, s)
      continue
    loop = len(reference.correlate1d(np.ones(n), np.ones(m), p, s))
    assert loop == output_size(n, m, (p, p), s) == (n + 2 * p - m) // s + 1 == jc.output_shape((n,), (m,), p, s)[0]
    checked += 1
  assert checked > 400


def test_multichannel_loop_is_the_sum_over_input_channels_and_equals_conv(rng):
  x, w = rng.normal(size=(6, 5, 3)), rng.normal(size=(3, 2, 3, 4))
  y = reference.correlate2d_channels(x, w, 1, (2, 1))
  expected = sum(reference.correlate2d(x[..., c], w[..., c, 1], 1, (2, 1)) for c in range(3))
  np.testing.assert_allclose(y[..., 1], expected, atol=1e-12)
  np.testing.assert_allclose(y, jc.conv(x[None], w, stride=(2, 1), padding=1)[0], atol=1e-5)


def test_multichannel_rejects_channel_mismatch():
  with pytest.raises(ValueError, match="same C_in"):
    reference.correlate2d_channels(np.ones((4, 4, 2)), np.ones((2, 2, 3, 1)))


def test_pooling_textbook_example():
  x = np.arange(9.0).reshape(3, 3)
  np.testing.assert_array_equal(reference.pool2d(x, 2, 1), [[4.0, 5.0], [7.0, 8.0]])
  np.testing.assert_array_equal(reference.pool2d(x, 2, 1, mode="avg"), [[2.0, 3.0], [5.0, 6.0]])


@pytest.mark.parametrize(
  "window, stride, padding",
  [(2, None, 0), (3, 2, 1), ((2, 3), (2, 3), (0, 1)), (3, 1, "same"), (2, 3, ((1, 0), (0, 1)))],
)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_loop_equals_jaxconv_per_channel(rng, window, stride, padding, mode):
  x = rng.normal(size=(7, 6, 2))
  pool = jc.max_pool if mode == "max" else jc.avg_pool
  y = np.asarray(pool(x[None], window, stride, padding))[0]
  for c in range(2):
    np.testing.assert_allclose(reference.pool2d(x[..., c], window, stride, padding, mode), y[..., c], atol=1e-6)


def test_pool_rejects_unknown_mode():
  with pytest.raises(ValueError, match="mode"):
    reference.pool2d(np.ones((3, 3)), 2, mode="min")


@pytest.mark.parametrize(
  "shape, kernel, padding, stride",
  [
    ((5, 5), (3, 3), "valid", 1),
    ((5, 5), (3, 3), "same", 1),
    ((5, 5), (3, 3), "full", 1),
    ((7, 6), (3, 2), 1, 2),
    ((9,), (4,), "same", 3),
  ],
)
def test_input_usage_is_the_gradient_of_the_summed_output(shape, kernel, padding, stride):
  """d sum(correlate(x, ones)) / dx counts how many windows use each input cell."""
  grad = jax.grad(lambda x: jc.correlate(x, jnp.ones(kernel), padding, stride).sum())(jnp.zeros(shape))
  np.testing.assert_array_equal(reference.input_usage(shape, kernel, padding, stride), grad)


def test_input_usage_boundary_cells_count_less_without_padding():
  assert reference.input_usage((5, 5), (3, 3), "valid")[[0, 0, 2], [0, 2, 2]].tolist() == [1, 3, 9]
  assert (reference.input_usage((5, 5), (3, 3), "full") == 9).all()
