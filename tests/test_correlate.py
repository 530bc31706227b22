"""correlate / convolve against scipy.signal: the three modes, stride, explicit pads, dilation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import IMPLS, assert_close, dilate_kernel, explicit_pairs, per_axis, random, refusal, rtol_for
from scipy import signal

import jaxconv as jc

OPS = {"correlate": jc.correlate, "convolve": jc.convolve}
SCIPY = {"correlate": signal.correlate, "convolve": signal.convolve}
MODES = ("valid", "same", "full")


@dataclasses.dataclass(frozen=True)
class Call:
  """One correlate/convolve call and scipy's answer to it."""

  name: str
  fn: str
  x: np.ndarray
  w: np.ndarray
  padding: object
  stride: object
  dilation: object
  expected: np.ndarray


def scipy_reference(fn: str, x: np.ndarray, w: np.ndarray, padding, stride, dilation) -> np.ndarray:
  """scipy's stride-1 answer for the zero-inserted kernel (explicit pads: np.pad + "valid"), subsampled."""
  x, w = x.astype(np.float64), dilate_kernel(w.astype(np.float64), dilation)
  if isinstance(padding, str):
    y = SCIPY[fn](x, w, padding)
  else:
    y = SCIPY[fn](np.pad(x, explicit_pairs(padding, x.ndim)), w, "valid")
  return y[tuple(slice(None, None, s) for s in per_axis(stride, x.ndim))]


def make_calls(specs: list[tuple], seed: int) -> list[Call]:
  """``Call``s of both functions for ``(name, x_shape, w_shape, paddings, stride, dilation)`` specs."""
  rng = np.random.default_rng(seed)
  calls = []
  for name, x_shape, w_shape, paddings, stride, dilation in specs:
    x, w = random(rng, x_shape, w_shape)
    for padding in paddings:
      for fn in OPS:
        expected = scipy_reference(fn, x, w, padding, stride, dilation)
        label = f"{fn}-{name}-{padding}-s{stride}-d{dilation}"
        calls.append(Call(label, fn, x, w, padding, stride, dilation, expected))
  return calls


# Ranks 1-3; odd, even and mixed kernels; kernels longer than x ("valid" then is an error).
# Compiled once per impl, so it holds few, small calls.
MODES_BATCH = make_calls(
  [
    ("1d-even", (12,), (4,), MODES, 1, 1),
    ("1d-long-kernel", (4,), (6,), ("same", "full"), 1, 1),
    ("2d-odd", (7, 8), (3, 3), MODES, 1, 1),
    ("2d-mixed", (6, 9), (2, 3), MODES, 1, 1),
    ("3d-even", (4, 5, 6), (2, 1, 4), MODES, 1, 1),
  ],
  seed=1,
)

# Stride s == the stride-1 result sampled [::s] on every axis; explicit pads == np.pad then
# "valid"; dilation d == the kernel with d - 1 zeros between taps; all three together.
GEOMETRY_BATCH = make_calls(
  [
    ("1d-even-strided", (13,), (4,), MODES, 3, 1),
    ("2d-strided", (9, 8), (3, 2), MODES, (2, 3), 1),
    ("3d-strided", (5, 6, 4), (2, 3, 1), ("same", "full"), (2, 1, 3), 1),
    ("1d-padded", (9,), (4,), (2, [(3, 0)], [(0, 5)]), 1, 1),
    ("2d-padded", (6, 7), (3, 2), (0, (1, 3), [(0, 2), (3, 1)]), 1, 1),
    ("3d-padded", (4, 5, 3), (2, 2, 3), ([(1, 0), (0, 0), (2, 1)],), 1, 1),
    ("1d-dilated", (14,), (3,), MODES, 1, 2),
    ("1d-even-dilated-strided", (15,), (2,), ("same",), 2, 3),
    ("2d-dilated", (9, 8), (2, 3), MODES, 1, (2, 1)),
    ("2d-all", (9, 10), (2, 3), ([(2, 1), (0, 3)],), (2, 1), (1, 2)),
    ("3d-dilated", (7, 5, 6), (2, 1, 2), ("same", "full"), 1, 2),
  ],
  seed=2,
)


def run_batch(calls: list[Call], impl: str | None) -> list[jax.Array]:
  """Every call's result, from one jit-compiled function (one compilation per batch and impl)."""

  def run(xs, ws):
    return [OPS[c.fn](x, w, c.padding, c.stride, c.dilation, impl=impl) for c, x, w in zip(calls, xs, ws)]

  return jax.jit(run)([c.x for c in calls], [c.w for c in calls])


def check_batch(calls: list[Call], impl: str | None) -> None:
  """Values equal scipy.signal's for every call; a call that ``impl`` refuses raises naming it."""
  accepted = []
  for c in calls:
    geometry = dict(stride=c.stride, padding=c.padding, dilation=c.dilation)
    if impl is None or refusal(impl, (1, *c.x.shape, 1), (*c.w.shape, 1, 1), convention="scipy", **geometry) is None:
      accepted.append(c)
    else:
      with pytest.raises(ValueError, match=f"impl={impl!r}"):
        OPS[c.fn](c.x, c.w, **geometry, impl=impl)
  for c, y in zip(accepted, run_batch(accepted, impl)):
    assert_close(y, c.expected, rtol_for(impl), c.name)


def test_modes_match_scipy():
  """ "valid", "same", "full" of correlate and convolve with the default kernel are scipy.signal's."""
  check_batch(MODES_BATCH, None)


@pytest.mark.parametrize("impl", IMPLS)
def test_modes_match_scipy_for_every_impl(impl: str):
  """The same for correlate with every kernel (convolve only flips w before the kernel runs)."""
  check_batch([c for c in MODES_BATCH if c.fn == "correlate"], impl)


def test_stride_padding_dilation_match_scipy():
  """Stride, explicit pads and dilation of the default kernel, as scipy-derived references.

  The kernels receive these as explicit geometry; test_conv checks every kernel's handling of
  it against lax, so one kernel suffices here for correlate's own semantics.
  """
  check_batch(GEOMETRY_BATCH, None)


@pytest.mark.parametrize("impl", IMPLS)
def test_d2l_edge_detection(impl: str):
  """d2l 7.2: K = [[1, -1]] marks 1->0 edges with 1 and 0->1 edges with -1, and misses horizontal ones."""
  x = np.ones((6, 8), np.float32)
  x[:, 2:6] = 0
  k = np.array([[1.0, -1.0]], np.float32)
  detect = jax.jit(lambda x: jc.correlate(x, k, impl=impl))
  if refusal(impl, (1, 6, 8, 1), (1, 2, 1, 1), convention="scipy") is not None:
    with pytest.raises(ValueError, match=f"impl={impl!r}"):
      detect(x)
    return
  y = np.zeros((6, 7), np.float32)
  y[:, 1], y[:, 5] = 1, -1
  assert_close(detect(x), y, rtol_for(impl), "edges")
  assert_close(detect(x.T), np.zeros((8, 5)), rtol_for(impl), "transposed")


def test_vmap_over_signals(rng: np.random.Generator):
  """``jax.vmap`` over a leading axis of x and w equals row-by-row scipy."""
  xs, ws = random(rng, (4, 10), (4, 3))
  ys = jax.vmap(lambda x, w: jc.correlate(x, w, "same", stride=2))(xs, ws)
  expected = np.stack([signal.correlate(x, w, "same")[::2] for x, w in zip(xs, ws)])
  assert_close(ys, expected, rtol_for(None), "vmap")


def test_int_inputs_are_promoted_not_truncated():
  """Integer x and w give float32 results, with no rounding of a float kernel to ints."""
  x = np.arange(6, dtype=np.int32)
  y = jc.correlate(x, np.array([1, 2], np.int32))
  assert y.dtype == jnp.float32
  np.testing.assert_array_equal(y, signal.correlate(x, [1, 2], "valid"))
  half = jc.convolve(x, np.array([0.5, 0.25], np.float32))
  np.testing.assert_allclose(half, signal.convolve(x, [0.5, 0.25], "valid"), rtol=1e-6)


def test_readme_examples():
  """The README's padding examples: scipy's "same" pads an even kernel low, lax's high."""
  x = np.arange(1.0, 6.0)
  np.testing.assert_array_equal(jc.correlate(x, [1.0, 1.0]), [3, 5, 7, 9])
  np.testing.assert_array_equal(jc.correlate(x, [1.0, 1.0], "full"), [1, 3, 5, 7, 9, 5])
  np.testing.assert_array_equal(jc.correlate(x, [1.0, 1.0], "same"), [1, 3, 5, 7, 9])
  np.testing.assert_array_equal(jc.conv(x[None, :, None], np.ones((2, 1, 1)), padding="same")[0, :, 0], [3, 5, 7, 9, 5])
