"""max_pool / avg_pool / adaptive pools against numpy loops (values and gradients) and lax.reduce_window (gradients)."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from references import assert_close, explicit_pairs, per_axis, random, rtol_for, with_vjp

import jaxconv as jc
from jaxconv import pooling
from jaxconv.geometry import resolve_padding

# (x shape, window, stride, padding); stride == window takes the non-overlapping path, others reduce_window.
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
  (pads,) = resolve_padding(padding, (6,), (2,))
  dx = jax.jit(jax.grad(lambda x: jc.max_pool(x, 2, padding=padding).sum()))(x)
  dx_ref = jax.grad(lambda x: reduce_window_pool("max", (2,), (2,), (pads,))(x).sum())(x)
  np.testing.assert_array_equal(dx, dx_ref)
  # Forward mode agrees with reverse mode (the rule is a JVP, so jvp and jacfwd work).
  np.testing.assert_array_equal(jax.jacfwd(lambda x: jc.max_pool(x, 2, padding=padding).sum())(x), dx_ref)


@pytest.mark.parametrize("window", [(2, 2), (3, 2), (1, 3), (2, 2, 2), (2, 1, 3)])
def test_max_pool_ties_across_window_axes_go_to_the_row_major_first(window, rng: np.random.Generator):
  """Values in {0, 1} tie in most windows: the gradient goes to the first maximum in row-major order, NaN wins."""
  shape = (2, *(3 * k for k in window), 3)
  x = rng.integers(0, 2, shape).astype(np.float32)
  x[0, *(0,) * len(window), 0] = np.nan  # a NaN in the first window of the first channel
  ct = rng.standard_normal((2, *(3,) * len(window), 3)).astype(np.float32)
  y, (dx,) = with_vjp(lambda x: jc.max_pool(x, window))(x, ct)
  y_ref, dx_ref = np.empty(ct.shape, np.float32), np.zeros_like(x)
  for b, *out, c in np.ndindex(*ct.shape):
    cells = [tuple(o * k + t for o, k, t in zip(out, window, tap)) for tap in np.ndindex(*window)]
    values = np.array([x[(b, *cell, c)] for cell in cells])
    first = int(np.argmax(np.isnan(values))) if np.isnan(values).any() else int(np.argmax(values == values.max()))
    y_ref[(b, *out, c)] = values[first]
    dx_ref[(b, *cells[first], c)] += ct[(b, *out, c)]
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(dx, dx_ref)


# --------------------------------------------------------------------------------------------
# Non-overlapping windows: the taps path (lax.split, small windows) against the block reduction
# it replaced and lax.reduce_window, ties and NaNs included.

TAP_WINDOWS = [(2,), (4,), (2, 2), (2, 3), (1, 3), (2, 2, 2), (2, 1, 3)]


def tiles_of(rng: np.random.Generator, window: tuple[int, ...], data: str) -> np.ndarray:
  """x ``(2, 3 k_1, ..., 3 k_r, 3)``: ``data`` "ties" (values in {0, 1}), "constant", "nan" (ties and NaNs), "-inf"."""
  shape = (2, *(3 * k for k in window), 3)
  x = rng.integers(0, 2, shape).astype(np.float32)
  if data == "constant":
    x[:] = 1.0
  if data == "nan":
    x[rng.random(shape) < 0.1] = np.nan
  if data == "-inf":  # whole windows of -inf (as ceil_mode's overhang makes), the rest ties
    x[:, : window[0]] = -np.inf
  return x


def block_reduce(op):
  """The block reduction that non-overlapping windows used before the taps path (and still use for large ones)."""
  return lambda x, window: pooling._reduce_blocks(x.reshape(pooling._blocks_shape(x, window)), op, len(window))


# constant and -inf windows in the slow set (11 s together on a 2-core AVX2 EPYC).
@pytest.mark.parametrize(
  "data",
  ["ties", pytest.param("constant", marks=pytest.mark.slow), "nan", pytest.param("-inf", marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("window", TAP_WINDOWS)
def test_taps_path_equals_the_block_reduction(window, data, rng: np.random.Generator):
  """Values, reverse- and forward-mode derivatives of both reductions agree exactly on ties, NaNs and -inf windows."""
  assert math.prod(window) <= pooling._SPLIT_MAX_TAPS  # these windows take the taps path
  x = tiles_of(rng, window, data)
  ct = rng.standard_normal((2, *(3,) * len(window), 3)).astype(np.float32)
  for op in (lax.max, lax.add):
    taps = functools.partial(pooling._reduce_tiles, op=op, window=window)
    blocks = functools.partial(block_reduce(op), window=window)
    y, (dx,) = with_vjp(taps)(x, ct)
    y_ref, (dx_ref,) = with_vjp(blocks)(x, ct)
    np.testing.assert_array_equal(y, y_ref)
    if op is lax.add:  # a different summation order: equal up to rounding
      np.testing.assert_allclose(dx, dx_ref, rtol=1e-6)
      continue
    np.testing.assert_array_equal(dx, dx_ref)
    t = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(jax.jvp(taps, (x,), (t,))[1], jax.jvp(blocks, (x,), (t,))[1])


@pytest.mark.parametrize("window", [pytest.param(w, marks=pytest.mark.slow) for w in ((4,), (2, 3), (2, 2, 2))])
def test_taps_path_equals_reduce_window_under_every_transform(window, rng: np.random.Generator):
  """max_pool / avg_pool on the taps path: jit, grad of order 2, jacfwd, hessian and vmap equal reduce_window's."""
  x = tiles_of(rng, window, "ties")[:1, ..., :2]  # ties, no NaN: reduce_window's rule is the same
  dims = (1, *window, 1)
  ref = {
    "max": lambda x: lax.reduce_window(x, -jnp.inf, lax.max, dims, dims, "VALID"),
    "avg": lambda x: lax.reduce_window(x, 0.0, lax.add, dims, dims, "VALID") / math.prod(window),
  }
  for kind, pool in (("max", jc.max_pool), ("avg", jc.avg_pool)):
    ours = functools.partial(pool, window=window)
    weights = np.arange(1.0, 1.0 + jax.eval_shape(ours, x).size).reshape(jax.eval_shape(ours, x).shape)

    def loss(p, weights=weights):
      return lambda x: jnp.sum(jnp.sin(p(x)) * weights)  # nonlinear: second derivatives are not zero

    np.testing.assert_array_equal(jax.jit(ours)(x), ref[kind](x))
    for transform in (jax.grad, jax.jacfwd, jax.hessian, lambda f: jax.grad(lambda x: jax.grad(f)(x).sum())):
      np.testing.assert_allclose(transform(loss(ours))(x), transform(loss(ref[kind]))(x), rtol=1e-5, atol=1e-6)
    batched = jax.vmap(jax.grad(loss(ours)))(x[:, None])
    np.testing.assert_allclose(batched, jax.vmap(jax.grad(loss(ref[kind])))(x[:, None]), rtol=1e-6)


def test_taps_path_keeps_bfloat16_and_is_linear_for_sums(rng: np.random.Generator):
  """bf16 max_pool gradients equal reduce_window's; avg_pool stays linear (jax.linear_transpose works)."""
  x = jnp.asarray(tiles_of(rng, (2, 2), "ties"), jnp.bfloat16)
  rw = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  ct = jnp.asarray(rng.standard_normal((2, 3, 3, 3)), jnp.bfloat16)
  dx = jax.vjp(lambda x: jc.max_pool(x, 2), x)[1](ct)[0]
  assert dx.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(jax.vjp(rw, x)[1](ct)[0], np.float32))
  xf = x.astype(jnp.float32)
  (dx_avg,) = jax.linear_transpose(lambda x: jc.avg_pool(x, 2), xf)(ct.astype(jnp.float32))
  np.testing.assert_allclose(dx_avg, jnp.repeat(jnp.repeat(ct.astype(jnp.float32), 2, 1), 2, 2) / 4, rtol=1e-6)


@pytest.mark.parametrize(
  "window, kind, taps_path",
  [
    ((2, 2), "max", True),
    ((2, 2, 2), "max", True),
    ((3, 3), "max", False),
    ((3, 3), "avg", True),
    ((4, 4), "avg", False),
  ],
)
def test_small_windows_take_the_taps_path(window, kind, taps_path):
  """Windows up to the thresholds split their taps (no reduce in the forward jaxpr); larger ones reduce blocks."""
  x = jax.ShapeDtypeStruct((1, *(2 * k for k in window), 2), np.float32)
  pool = functools.partial(jc.max_pool if kind == "max" else jc.avg_pool, window=window)
  jaxpr = str(jax.make_jaxpr(pool)(x))
  assert ("split" in jaxpr) == taps_path
  assert ("reduce_max" in jaxpr or "reduce_sum" in jaxpr) != taps_path


@pytest.mark.parametrize("window", [(2, 2), (3, 3)])
def test_max_gradients_build_their_tap_order_in_the_program(window):
  """Both max gradients (taps and blocks) compare against a tap order built from iotas, not a captured
  constant: XLA:CPU indexed such a constant per element of the gradient (LeNet's first pool, 4x slower)."""
  x = jnp.ones((2, *(2 * k for k in window), 3))
  closed = jax.make_jaxpr(jax.grad(lambda x: jc.max_pool(x, window).sum()))(x)
  assert "iota" in str(closed.jaxpr)
  assert not [c.shape for c in closed.consts if np.ndim(c) > 1]  # the old order: (1, 1, k, 1, k, 1)


# --------------------------------------------------------------------------------------------
# PyTorch's pools: ceil_mode, dilation, adaptive cells. The references below are loops written
# from PyTorch's documented formulas, not from jaxconv's code:
#
# - torch.nn.MaxPool{1,2,3}d / AvgPool{1,2,3}d output size per axis:
#   L_out = floor_or_ceil((L_in + 2 p - d (k - 1) - 1) / s) + 1, and with ceil_mode "sliding
#   windows are allowed to go off-bounds if they start within the left padding or the input;
#   windows that would start in the right padded region are ignored" (PyTorch docs).
# - MaxPool: out[i] = max_m input[s i + d m - p] over the taps m that hit the input (pads are -inf).
# - AvgPool (aten/src/ATen/native/cpu/AvgPoolKernel.cpp): hstart = i s - p,
#   hend = min(hstart + k, L_in + p), pool_size = hend - hstart; then hstart = max(hstart, 0),
#   hend = min(hend, L_in); divide by pool_size if count_include_pad else by hend - hstart.
#   (jaxconv's pads may be asymmetric: read "+ p" on the high side as "+ hi".)
# - Adaptive pools (aten/src/ATen/native/AdaptiveAveragePooling.cpp, start_index/end_index):
#   output cell i of an axis of length n covers [floor(i n / o), ceil((i + 1) n / o)).


def torch_pool_size(n: int, k: int, s: int, lo: int, hi: int, d: int, ceil_mode: bool) -> int:
  """PyTorch's documented output size of one axis (see above)."""
  span = (n + lo + hi - d * (k - 1) - 1) / s
  out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
  if ceil_mode and (out - 1) * s >= n + lo:  # the last window would start in the right padding
    out -= 1
  return out


def window_cells(n: int, k: int, s: int, lo: int, hi: int, d: int, ceil_mode: bool, include_pad: bool):
  """Per output index of one axis: the input indices its window reads, and its avg divisor factor."""
  cells, divisors = [], []
  for i in range(torch_pool_size(n, k, s, lo, hi, d, ceil_mode)):
    cells.append([s * i + d * m - lo for m in range(k) if 0 <= s * i + d * m - lo < n])
    start = s * i - lo
    end = min(start + k, n + hi)
    divisors.append(end - start if include_pad else min(end, n) - max(start, 0))
  return cells, divisors


def adaptive_cells_ref(n: int, o: int):
  """Per output index of one axis: PyTorch's adaptive cell [floor(i n / o), ceil((i + 1) n / o)) and its size."""
  cells = [list(range(math.floor(i * n / o), math.ceil((i + 1) * n / o))) for i in range(o)]
  return cells, [len(c) for c in cells]


def loop_pool(kind: str, x: np.ndarray, ct: np.ndarray, axes) -> tuple[np.ndarray, np.ndarray]:
  """Max or mean of x ``(N, *S, C)`` over product cells, and the vjp for the cotangent ``ct``, by loops.

  ``axes``: per spatial axis, (cells, divisors) as above. Max gives each window's cotangent to its
  first maximal cell in row-major window order (PyTorch's and lax's rule).
  """
  x = x.astype(np.float64)
  out = [len(cells) for cells, _ in axes]
  y = np.empty((x.shape[0], *out, x.shape[-1]))
  dx = np.zeros_like(x)
  for pos in np.ndindex(*out):
    members = list(itertools.product(*(cells[i] for (cells, _), i in zip(axes, pos))))
    values = np.stack([x[(slice(None), *m, slice(None))] for m in members])  # (cells, N, C)
    g = ct[(slice(None), *pos, slice(None))]
    if kind == "max":
      y[(slice(None), *pos, slice(None))] = values.max(0)
      first = np.argmax(values == values.max(0), axis=0)  # the first maximum
      for b, c in np.ndindex(*first.shape):
        dx[(b, *members[first[b, c]], c)] += g[b, c]
    else:
      divisor = math.prod(divs[i] for (_, divs), i in zip(axes, pos))
      y[(slice(None), *pos, slice(None))] = values.sum(0) / divisor
      for m in members:
        dx[(slice(None), *m, slice(None))] += g / divisor
  return y, dx


# name: (x shape, window, stride, padding as (lo, hi) pairs or an int, dilation, ceil_mode)
TORCH_CASES = {
  "1d-ceil-overhang": ((2, 7, 2), 2, None, 0, 1, True),
  "1d-ceil-dilated-pad": ((1, 10, 2), 3, 2, 1, 2, True),
  "2d-ceil-pad-stride": ((1, 7, 6, 2), 3, 2, 1, 1, True),
  "2d-ceil-no-overhang": ((1, 6, 6, 1), 2, None, 0, 1, True),
  "2d-ceil-drops-window-in-right-pad": ((1, 5, 5, 1), 2, 2, 1, 1, True),
  "2d-ceil-stride-gt-window": ((1, 8, 7, 1), 2, 3, 0, 1, True),
  "2d-ceil-input-smaller-than-window": ((1, 1, 3, 1), 2, 2, 0, 1, True),
  "2d-ceil-asymmetric-pads": ((1, 6, 7, 1), (3, 2), (2, 2), [(1, 2), (0, 1)], 1, True),
  "2d-dilated": ((1, 7, 8, 2), 3, 1, 0, (2, 3), False),
  "2d-dilated-non-overlapping": ((1, 8, 8, 1), 2, 2, 0, 2, False),
  "2d-dilated-pad-ceil": ((1, 7, 8, 1), 3, 2, 1, 2, True),
  "3d-ceil": ((1, 5, 4, 3, 1), (2, 3, 2), (2, 2, 2), [(1, 1), (1, 1), (0, 0)], 1, True),
  "3d-dilated": ((1, 5, 5, 4, 1), 2, (1, 2, 1), 0, (2, 1, 2), False),
}
TORCH_KINDS = ("max", "avg", "avg-exclude-pad")


def torch_case(name: str, kind: str):
  """The jaxconv call and the reference per-axis cells of ``TORCH_CASES[name]``."""
  x_shape, window, stride, padding, dilation, ceil_mode = TORCH_CASES[name]
  rank = len(x_shape) - 2
  ks = per_axis(window, rank)
  ss = ks if stride is None else per_axis(stride, rank)
  ds = per_axis(dilation, rank)
  pads = explicit_pairs(padding, rank)
  axes = [
    window_cells(n, k, s, lo, hi, d, ceil_mode, kind != "avg-exclude-pad")
    for n, k, s, (lo, hi), d in zip(x_shape[1:-1], ks, ss, pads, ds)
  ]
  if kind == "max":
    pool = functools.partial(
      jc.max_pool, window=window, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode
    )
  else:
    pool = functools.partial(
      jc.avg_pool, window=window, stride=stride, padding=padding, count_include_pad=kind == "avg", ceil_mode=ceil_mode
    )
  return pool, axes


TORCH_CALLS = [(n, k) for n in TORCH_CASES for k in TORCH_KINDS if k == "max" or TORCH_CASES[n][4] == 1]


@pytest.mark.parametrize("name, kind", TORCH_CALLS)
def test_ceil_mode_and_dilation_match_pytorch_formulas(name: str, kind: str, rng: np.random.Generator):
  """Values and vjp under jit equal the loops from PyTorch's formulas; rounded data makes ties (first wins)."""
  pool, axes = torch_case(name, kind)
  x = np.round(2 * rng.standard_normal(TORCH_CASES[name][0])).astype(np.float32)
  (ct,) = random(rng, (x.shape[0], *(len(c) for c, _ in axes), x.shape[-1]))
  y_ref, dx_ref = loop_pool(kind, x, ct, axes)
  y, (dx,) = with_vjp(pool)(x, ct)
  assert_close(y, y_ref, rtol_for(None), "y")
  assert_close(dx, dx_ref, rtol_for(None), "dx")
  _, window, stride, padding, dilation, ceil_mode = TORCH_CASES[name]
  stride = window if stride is None else stride
  assert jc.output_shape(x.shape[1:-1], window, padding, stride, dilation, ceil_mode=ceil_mode) == y.shape[1:-1]


@pytest.mark.slow
def test_pool_gradients_pass_numerical_checks(rng: np.random.Generator):
  """check_grads (forward and reverse, two orders) on the reshape, reduce_window, dilated and adaptive paths."""
  from jax.test_util import check_grads

  x = jnp.asarray(rng.permutation(7 * 6).reshape(1, 7, 6, 1) / 7.0)  # distinct values: no ties
  for f in (
    lambda x: jc.max_pool(x, 2, ceil_mode=True),
    lambda x: jc.max_pool(x, 3, 2, 1, dilation=2, ceil_mode=True),
    lambda x: jc.avg_pool(x, 3, 2, 1, count_include_pad=False, ceil_mode=True),
    lambda x: jc.adaptive_max_pool(x, (3, 4)),
    lambda x: jc.adaptive_avg_pool(x, (4, 5)),
  ):
    # Jitted: the same rules as eager, but each jvp/vjp program compiles once instead of op by op
    # (a third of the time).
    check_grads(jax.jit(f), (x,), order=2, modes=("fwd", "rev"), eps=1e-3, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
  "name, window, stride, dilation, ceil_mode, uses_reduce_window",
  [
    ("ceil-overhang-reshape", 2, None, 1, True, False),
    ("dilated-blocks", 2, 2, 2, False, False),
    ("dilated-overlapping-blocks", 3, 1, 2, True, False),
    ("overlapping", 3, 2, 1, True, True),
  ],
)
def test_ceil_and_dilation_code_paths(name, window, stride, dilation, ceil_mode, uses_reduce_window):
  """stride == window keeps the reshape path with ceil_mode's overhang; dilated windows never use reduce_window."""
  x = jax.ShapeDtypeStruct((1, 7, 9, 2), np.float32)
  f = functools.partial(jc.max_pool, window=window, stride=stride, dilation=dilation, ceil_mode=ceil_mode)
  assert ("reduce_window" in str(jax.make_jaxpr(jax.grad(lambda x: f(x).sum()))(x))) == uses_reduce_window, name


def test_ceil_overhang_and_dilation_pad_with_minus_infinity():
  """Cells past the padded input never win a max, even when every real value is negative."""
  x = -np.ones((1, 5, 5, 1), np.float32)
  np.testing.assert_array_equal(jc.max_pool(x, 2, ceil_mode=True), -np.ones((1, 3, 3, 1)))
  np.testing.assert_array_equal(jc.max_pool(x, 2, 1, 1, dilation=2), -np.ones((1, 5, 5, 1)))


# name: (x shape, output_size)
ADAPTIVE_CASES = {
  "1d-uneven": ((2, 7, 2), 3),
  "1d-more-outputs-than-inputs": ((1, 3, 1), 5),
  "1d-one-input": ((1, 1, 2), 3),
  "2d-uneven": ((1, 7, 5, 2), (3, 4)),
  "2d-even": ((1, 6, 8, 1), (3, 2)),
  "2d-global": ((2, 5, 6, 1), 1),
  "2d-none-keeps-axis": ((1, 5, 6, 1), (2, None)),
  "3d-uneven": ((1, 5, 4, 3, 1), (2, 3, 2)),
}


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("name", ADAPTIVE_CASES)
def test_adaptive_pools_match_pytorch_cells(name: str, kind: str, rng: np.random.Generator):
  """Values and vjp under jit equal loops over PyTorch's cells [floor(i n / o), ceil((i + 1) n / o))."""
  x_shape, output_size = ADAPTIVE_CASES[name]
  spatial = x_shape[1:-1]
  out = [
    n if o is None else o
    for n, o in zip(spatial, per_axis(output_size, len(spatial)) if output_size is not None else ())
  ]
  axes = [adaptive_cells_ref(n, o) for n, o in zip(spatial, out)]
  x = np.round(2 * rng.standard_normal(x_shape)).astype(np.float32)
  (ct,) = random(rng, (x_shape[0], *out, x_shape[-1]))
  y_ref, dx_ref = loop_pool(kind, x, ct, axes)
  pool = jc.adaptive_max_pool if kind == "max" else jc.adaptive_avg_pool
  y, (dx,) = with_vjp(functools.partial(pool, output_size=output_size))(x, ct)
  assert_close(y, y_ref, rtol_for(None), "y")
  assert_close(dx, dx_ref, rtol_for(None), "dx")


def test_adaptive_pool_of_an_even_split_is_a_window_pool(rng: np.random.Generator):
  """When o divides n the cells are windows of n // o at stride n // o."""
  (x,) = random(rng, (2, 6, 8, 3))
  np.testing.assert_allclose(jc.adaptive_avg_pool(x, (3, 2)), jc.avg_pool(x, (2, 4)), rtol=1e-6)
  np.testing.assert_array_equal(jc.adaptive_max_pool(x, (3, 2)), jc.max_pool(x, (2, 4)))
  assert jc.adaptive_avg_pool(jnp.asarray(x, jnp.bfloat16), 2).dtype == jnp.bfloat16


X = np.ones((1, 6, 6, 2), np.float32)


@pytest.mark.parametrize(
  "fn, kwargs, exc, match",
  [
    (jc.adaptive_avg_pool, dict(output_size=0), ValueError, "output_size"),
    (jc.adaptive_max_pool, dict(output_size=-1), ValueError, "output_size"),
    (jc.adaptive_avg_pool, dict(output_size=(2, 0)), ValueError, "output_size"),
    (jc.adaptive_max_pool, dict(output_size=(2, 2, 2)), ValueError, "output_size"),
    (jc.adaptive_avg_pool, dict(output_size=2.5), TypeError, "output_size"),
    (jc.adaptive_max_pool, dict(output_size=True), TypeError, "output_size"),
    (jc.max_pool, dict(window=2, ceil_mode=1), TypeError, "ceil_mode"),
    (jc.avg_pool, dict(window=2, ceil_mode="yes"), TypeError, "ceil_mode"),
    (jc.avg_pool, dict(window=2, count_include_pad=None), TypeError, "count_include_pad"),
    (jc.max_pool, dict(window=2, dilation=0), ValueError, "dilation"),
    (jc.max_pool, dict(window=2, dilation=(1, 1, 1)), ValueError, "dilation"),
    (jc.max_pool, dict(window=3, dilation=3), ValueError, "window"),  # extent 7 > 6
    (jc.max_pool, dict(window=2, padding=4, dilation=3), ValueError, "padding"),  # pad >= extent 4
    (jc.max_pool, dict(window=4, stride=4, ceil_mode=True, padding=[(0, 0), (0, 0)]), None, None),
  ],
)
def test_pool_arguments_are_checked(fn, kwargs, exc, match):
  """Bad arguments raise before tracing, naming the argument (also under jit); a valid edge case passes."""
  if exc is None:
    assert jax.jit(functools.partial(fn, **kwargs))(X).shape == (1, 2, 2, 2)
    return
  with pytest.raises(exc, match=f"^{match}"):
    jax.jit(functools.partial(fn, **kwargs))(X)


@pytest.mark.parametrize(
  "pool",
  [
    lambda x: jc.max_pool(x, 2),  # the taps path
    lambda x: jc.max_pool(x, 3, 2, padding=1),  # reduce_window
    lambda x: jc.adaptive_max_pool(x, 4),  # uneven cells of 6
  ],
)
def test_16bit_max_pools_run_in_float32_and_equal_it(pool, rng: np.random.Generator):
  """bf16 max pools reduce in float32 (the jaxpr says so); values and gradients equal the float32 pool's."""
  x32 = jnp.asarray(rng.permutation(216).reshape(2, 6, 6, 3) - 100.0, jnp.float32)  # exact in bf16
  x = x32.astype(jnp.bfloat16)
  assert "f32[2,6,6,3]" in str(jax.make_jaxpr(pool)(x))
  y = pool(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y.astype(np.float32), pool(x32))
  ct32 = jnp.asarray(rng.integers(-8, 8, y.shape), jnp.float32)  # small integers: sums exact in bf16
  (dx,) = jax.vjp(pool, x)[1](ct32.astype(jnp.bfloat16))
  (want,) = jax.vjp(pool, x32)[1](ct32)
  assert dx.dtype == jnp.bfloat16
  np.testing.assert_array_equal(dx.astype(np.float32), want)
