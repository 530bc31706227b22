"""max_pool / avg_pool against numpy loops (values) and lax.reduce_window (gradients)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv as jc
from references import assert_close, explicit_pairs, per_axis, random, rtol_for, with_vjp

# (x shape, window, stride, padding); stride == window takes ops' reshape path, others reduce_window.
CASES = {
    "2x2": ((2, 6, 6, 3), 2, None, "valid"),
    "2x2-odd-input": ((1, 7, 5, 2), 2, None, "valid"),
    "2x2-same-odd-input": ((1, 7, 5, 2), 2, 2, "same"),
    "pairs-non-overlapping": ((1, 5, 6, 2), (2, 3), (2, 3), [(1, 0), (0, 2)]),
    "3x3-stride-2-pad-1": ((2, 7, 7, 2), 3, 2, 1),
    "3x2-stride-1-same": ((1, 6, 5, 2), (3, 2), 1, "same"),
    "gaps-stride-gt-window": ((1, 8, 9, 1), 2, 3, "valid"),
    "1d-same": ((2, 9, 3), 3, 2, "same"),
    "3d-non-overlapping": ((1, 4, 6, 4, 2), 2, None, "valid"),
    "3d-pairs": ((1, 5, 4, 4, 1), (3, 2, 2), (2, 1, 2), [(1, 1), (0, 1), (1, 0)]),
}
KINDS = {
    "max": jc.max_pool,
    "avg": functools.partial(jc.avg_pool, count_include_pad=True),
    "avg-exclude-pad": functools.partial(jc.avg_pool, count_include_pad=False),
}


def geometry(name: str) -> tuple[tuple[int, ...], tuple[int, ...], list[tuple[int, int]]]:
  """Window, strides and explicit pads of case ``name``; "same" pads as lax.padtype_to_pads has them."""
  x_shape, window, stride, padding = CASES[name]
  rank = len(x_shape) - 2
  window = per_axis(window, rank)
  stride = window if stride is None else per_axis(stride, rank)
  if isinstance(padding, str):
    return window, stride, [tuple(p) for p in lax.padtype_to_pads(x_shape[1:-1], window, stride, padding.upper())]
  return window, stride, explicit_pairs(padding, rank)


def pool_loop(kind: str, x: np.ndarray, window, stride, pads) -> np.ndarray:
  """Max or mean of each window of x ``(N, *S, C)``, looping over output positions."""
  padded = np.pad(x.astype(np.float64), [(0, 0), *pads, (0, 0)], constant_values=np.nan)
  out = [(n - k) // s + 1 for n, k, s in zip(padded.shape[1:-1], window, stride)]
  y = np.empty((x.shape[0], *out, x.shape[-1]))
  for pos in np.ndindex(*out):
    cells = padded[(slice(None), *(slice(p * s, p * s + k) for p, s, k in zip(pos, stride, window)), slice(None))]
    cells = cells.reshape(x.shape[0], -1, x.shape[-1])
    reduce = {
        "max": lambda c: np.nanmax(c, axis=1),
        "avg": lambda c: np.nansum(c, axis=1) / math.prod(window),
        "avg-exclude-pad": lambda c: np.nanmean(c, axis=1),
    }[kind]
    y[(slice(None), *pos, slice(None))] = reduce(cells)
  return y


def reduce_window_pool(kind: str, window, stride, pads):
  """The gradient reference ``x -> pooled x`` built on lax.reduce_window."""
  dims, strides, padding = (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0))

  def pool(x):
    if kind == "max":
      return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, padding)
    sums = lax.reduce_window(x, 0.0, lax.add, dims, strides, padding)
    if kind == "avg":
      return sums / math.prod(window)
    return sums / lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, dims, strides, padding)

  return pool


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CASES)
def test_values_and_gradients(name: str, kind: str, rng: np.random.Generator):
  """Values equal the loop; gradients under jit equal reduce_window's (continuous data: no ties)."""
  x_shape, window, stride, padding = CASES[name]
  pool = functools.partial(KINDS[kind], window=window, stride=stride, padding=padding)
  (x,) = random(rng, x_shape)
  y_loop = pool_loop(kind, x, *geometry(name))
  (ct,) = random(rng, y_loop.shape)
  y, (dx,) = with_vjp(pool)(x, ct)
  _, (dx_ref,) = with_vjp(reduce_window_pool(kind, *geometry(name)))(x, ct)
  assert_close(y, y_loop, rtol_for(None), "y")
  assert_close(dx, dx_ref, rtol_for(None), "dx")


@pytest.mark.parametrize("name", CASES)
def test_both_code_paths_are_covered(name: str):
  """Non-overlapping windows (stride == window) avoid reduce_window; the other cases use it."""
  x_shape, window, stride, padding = CASES[name]
  window_, stride_, _ = geometry(name)
  x = jax.ShapeDtypeStruct(x_shape, np.float32)
  for pool in KINDS.values():
    jaxpr = str(jax.make_jaxpr(functools.partial(pool, window=window, stride=stride, padding=padding))(x))
    assert ("reduce_window" in jaxpr) == (window_ != stride_), name


def test_max_pool_pads_with_minus_infinity():
  """Padded cells never win a max, on both code paths, even when every real value is negative."""
  x = -np.ones((1, 5, 5, 1), np.float32)
  np.testing.assert_array_equal(jc.max_pool(x, 2, padding="same"), -np.ones((1, 3, 3, 1)))
  np.testing.assert_array_equal(jc.max_pool(x, 3, 1, padding="same"), -np.ones((1, 5, 5, 1)))


def test_dtypes():
  """Integer inputs are averaged in float (not truncated); bf16 stays bf16."""
  x = np.array([1, 2, 3, 4], np.int32).reshape(1, 4, 1)
  np.testing.assert_array_equal(jc.avg_pool(x, 2)[0, :, 0], [1.5, 3.5])
  assert jc.max_pool(x, 2).dtype == jnp.float32
  xb = jnp.asarray(x, jnp.bfloat16)
  assert jc.avg_pool(xb, 2, 1).dtype == jc.max_pool(xb, 2).dtype == jnp.bfloat16


@pytest.mark.parametrize("padding", ["valid", [(1, 1)]])
def test_max_pool_ties_give_the_whole_gradient_to_the_first(padding):
  """On ties the reshape path routes the gradient like reduce_window (first maximal element)."""
  x = jnp.array([1.0, 1.0, 0.0, 2.0, 3.0, 3.0]).reshape(1, 6, 1)
  (pads,) = jc.padding.resolve_padding(padding, (6,), (2,))
  dx = jax.jit(jax.grad(lambda x: jc.max_pool(x, 2, padding=padding).sum()))(x)
  dx_ref = jax.grad(lambda x: reduce_window_pool("max", (2,), (2,), (pads,))(x).sum())(x)
  np.testing.assert_array_equal(dx, dx_ref)
  # Forward mode agrees with reverse mode (the rule is a JVP, so jvp and jacfwd work).
  np.testing.assert_array_equal(jax.jacfwd(lambda x: jc.max_pool(x, 2, padding=padding).sum())(x), dx_ref)
