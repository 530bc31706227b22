"""Pooling as PyTorch's: max and average over windows, and adaptive pools, of channels-last batches.

Windows are resolved once into a ``Window`` (``jaxconv.geometry``), so pools validate and size
their outputs exactly as convolutions do, ``ceil_mode`` included (PyTorch's rule: an axis keeps
``ceil((n + lo + hi - k_eff) / s) + 1`` windows, one fewer if the last would start in the high
padding). A window's cells past the padded input are absent: max pooling fills them with -inf
(as it fills its pads), average pooling adds zeros and divides by the cells inside the padded
input (``count_include_pad``) or by the real cells.

Three reductions, one tie rule. Non-overlapping windows (stride == window, no dilation; also
adaptive cells that divide their axis) never use ``lax.reduce_window``, whose max gradient
(``select_and_scatter``) is slow on CPU. Small ones (up to ``_SPLIT_MAX_TAPS`` cells for max,
``_SPLIT_SUM_TAPS`` for sums) are reduced over their taps: one reshape to
``(N, o_1, k_1, ..., o_r, k_r * C)`` and ``lax.split`` along each window axis give the
``k_1 * ... * k_r`` taps ``(N, *o, C)``, which a balanced tree of elementwise maxima or adds
combines: the forward pass is one vectorised loop over the output, reading the input once. Under
differentiation one variadic reduce finds each window's max and first maximal tap, and the
gradient is one select over the blocks, writing each input cell once (the taps' own transpose, a
concatenate, and a recomputation of the max per input cell were both slower). Larger windows
reshape into blocks ``(N, o_1, k_1, ..., o_r, k_r, C)`` and reduce over the window axes. Other
undilated windows use ``lax.reduce_window``; dilated max windows (whose ``reduce_window`` JAX
cannot differentiate) and the uneven cells of the adaptive pools are gathered into the same blocks
by strided slices or index gathers. Max pooling gives a window's whole gradient to its first
maximal element (row-major; a NaN is the max of its window) on every path, as lax and PyTorch do.
16-bit inputs are pooled in float32 and the result cast back: exact for a max and its gradient,
float32 accumulation for sums, and 3-4x faster than bfloat16 on XLA:CPU.

>>> import jaxconv as jc
>>> jc.max_pool(np.arange(16.0).reshape(1, 4, 4, 1), 2)[0, ..., 0].tolist()
[[5.0, 7.0], [13.0, 15.0]]
>>> jc.avg_pool(np.arange(5.0).reshape(1, 5, 1), 2, ceil_mode=True)[0, :, 0].tolist()
[0.5, 2.5, 4.0]
>>> jc.adaptive_avg_pool(np.arange(5.0).reshape(1, 5, 1), 3)[0, :, 0].tolist()
[0.5, 2.0, 3.5]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec

from jaxconv import kernels
from jaxconv._checks import check_bool, is_int, normalize_ints
from jaxconv.geometry import Padding, Window, resolve_window
from jaxconv.ops import check_rank, promote

# --------------------------------------------------------------------------------------------
# geometry


def pool_geometry(
  spatial: Sequence[int],
  window: int | Sequence[int],
  stride: int | Sequence[int] | None = None,
  padding: Padding = "valid",
  dilation: int | Sequence[int] = 1,
  ceil_mode: bool = False,
) -> Window:
  """Validate a pooling window over an input of ``spatial`` shape and resolve it (stride defaults to the window)."""
  g = resolve_window(spatial, window, padding, stride, dilation, ceil_mode=ceil_mode, kernel_name="window")
  # As in PyTorch (which allows less, pad <= window / 2): a pad as wide as the window's extent
  # would make windows that see only padding.
  if any(lo >= e or hi >= e for (lo, hi), e in zip(g.padding, g.kernel_extent)):
    raise ValueError(
      f"padding must be smaller than the window on each side; got pads {g.padding} for window extent {g.kernel_extent}"
    )
  return g


def pool_window(
  x: jax.Array,
  window: int | Sequence[int],
  stride: int | Sequence[int] | None,
  padding: Padding,
  dilation: int | Sequence[int] = 1,
  ceil_mode: bool = False,
) -> Window:
  """Validate a pooling call on x ``(N, *spatial, C)``: the resolved window (stride defaults to it)."""
  check_rank("x", x, (3, 4, 5), "(N, *spatial, C) with 1-3 spatial axes")
  return pool_geometry(x.shape[1:-1], window, stride, padding, dilation, ceil_mode)


def _high_pads(g: Window) -> tuple[int, ...]:
  """The high pads that make every window lie inside the padded input: ``hi`` plus ceil_mode's overhang."""
  return tuple(
    hi + max(0, (o - 1) * s + e - p)
    for (_, hi), o, s, e, p in zip(g.padding, g.out_spatial, g.stride, g.kernel_extent, g.padded)
  )


def window_counts(g: Window, count_include_pad: bool = False) -> np.ndarray:
  """Cells each window averages over, shape ``out_spatial``: inside the padded input, or real (non-pad) ones only.

  As PyTorch's avg_pool: ``end = min(start + k, n + lo + hi)`` in padded coordinates; with
  ``count_include_pad`` the divisor is ``end - start``, otherwise ``min(end, n + lo) - max(start, lo)``.
  """
  per_axis = []
  for n, k, s, (lo, hi), o in zip(g.spatial, g.kernel, g.stride, g.padding, g.out_spatial):
    starts = np.arange(o) * s
    ends = np.minimum(starts + k, n + lo + hi)
    per_axis.append(ends - starts if count_include_pad else np.minimum(ends, n + lo) - np.maximum(starts, lo))
  return functools.reduce(np.multiply.outer, per_axis)


# --------------------------------------------------------------------------------------------
# blocks: (N, o_1, k_1, ..., o_r, k_r, C), one window per output position


def _split_rows(x: jax.Array, shape: Sequence[int]) -> jax.Array:
  """``x.reshape(shape)`` for a reshape that keeps axis 0 (the batch) and splits the axes after it.

  Under Explicit mesh axes JAX cannot infer the sharding of a general reshape; a batch-sharded x
  keeps its batch sharding here, so pools stay split along the batch (``docs/sharding.md``).
  """
  spec = tuple(getattr(jax.typeof(x).sharding, "spec", ()))
  if spec and spec[0] is not None and not any(spec[1:]):
    return jnp.reshape(x, shape, out_sharding=PartitionSpec(spec[0]))
  return x.reshape(shape)


def _window_axes(rank: int) -> tuple[int, ...]:
  """The window axes of blocks ``(N, o_1, k_1, ..., o_r, k_r, C)``."""
  return tuple(range(2, 2 * rank + 1, 2))


def _tap_order(blocks: jax.Array, rank: int) -> jax.Array:
  """Each cell's row-major tap in its window, int32, shaped and sharded as blocks ``(N, o_1, k_1, ..., C)``.

  Built from iotas inside the fusion that reads it: a small constant broadcast over the blocks
  made XLA:CPU's gradient select 4x slower (LeNet's first 2x2 pool, 0.85 -> 0.21 ms), and an int32
  index compares faster than an int8 one.
  """
  sharding = jax.typeof(blocks).sharding
  first, *rest = _window_axes(rank)
  order = lax.broadcasted_iota(np.int32, blocks.shape, first, out_sharding=sharding)
  for a in rest:
    order = order * blocks.shape[a] + lax.broadcasted_iota(np.int32, blocks.shape, a, out_sharding=sharding)
  return order


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _block_max(blocks: jax.Array, rank: int) -> jax.Array:
  """Max over the windows of blocks ``(N, o_1, k_1, ..., o_r, k_r, C)`` -> ``(N, *o, C)``."""
  return jnp.max(blocks, axis=_window_axes(rank))


@_block_max.defjvp
def _block_max_jvp(rank: int, primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """The first maximal element of each window (row-major) carries the tangent, as in lax and PyTorch."""
  (blocks,), (tangent,) = primals, tangents
  axes = _window_axes(rank)
  y = jnp.max(blocks, axis=axes, keepdims=True)
  order = _tap_order(blocks, rank)
  # A NaN is the max of its window (jnp.max propagates it), so it, not nothing, takes the tangent.
  is_max = (blocks == y) | (jnp.isnan(blocks) & jnp.isnan(y))
  taps = math.prod(blocks.shape[a] for a in axes)
  first = jnp.min(jnp.where(is_max, order, taps), axis=axes, keepdims=True)
  return jnp.squeeze(y, axes), jnp.sum(jnp.where(order == first, tangent, 0), axis=axes)


def _reduce_blocks(blocks: jax.Array, op: Callable, rank: int) -> jax.Array:
  """Max (first-tie gradient) or sum over the windows of blocks."""
  return _block_max(blocks, rank) if op is lax.max else jnp.sum(blocks, axis=_window_axes(rank))


# --------------------------------------------------------------------------------------------
# taps: a non-overlapping window's cells as k_1 * ... * k_r arrays (N, *o, C), one per offset


def _window_taps(tiles: jax.Array, window: tuple[int, ...]) -> list[jax.Array]:
  """The taps of tiles ``(N, o_1 * k_1, ..., o_r * k_r, C)``: ``prod(window)`` arrays ``(N, *o, C)``, row-major.

  One reshape to ``(N, o_1, k_1, ..., o_r, k_r * C)`` (the innermost window axis merged with the
  channels, so its taps are contiguous runs of the last axis), then ``lax.split`` along each window
  axis. A split's transpose is a concatenate, so the gradient writes each tap back in one pass
  (slicing's transpose is a pad and an add per tap, several times slower).
  """
  n, c, rank = tiles.shape[0], tiles.shape[-1], len(window)
  out = [m // k for m, k in zip(tiles.shape[1:-1], window)]
  shape = [n]
  for o, k in zip(out[:-1], window[:-1]):
    shape += [o, k]
  shape += [out[-1], window[-1] * c]
  taps = [_split_rows(tiles, shape)]
  for axis, k in enumerate(window[:-1]):
    taps = [t for part in taps for t in lax.split(part, (1,) * k, axis=2 + 2 * axis)]
  taps = [t for part in taps for t in lax.split(part, (c,) * window[-1], axis=2 * rank)]
  return [lax.squeeze(t, tuple(range(2, 2 * rank, 2))) for t in taps]


def _tree(op: Callable, xs: Sequence[jax.Array]) -> jax.Array:
  """``op`` over xs as a balanced tree (depth log2 len(xs), so XLA fuses it into one loop without a long chain)."""
  xs = list(xs)
  while len(xs) > 1:
    xs = [op(xs[i], xs[i + 1]) if i + 1 < len(xs) else xs[i] for i in range(0, len(xs), 2)]
  return xs[0]


# Windows with more taps than these keep the block reduction. Chosen from
# experiments/bench/bench_pooling.py's taps-vs-blocks table on XLA:CPU (forward + backward, alone
# and around a ReLU): the taps' max wins up to 2x2x2 and loses from 3x3 on (its variadic reduce
# and select grow with the taps); their sum wins up to 3x3 and is mixed from 4x4 on.
_SPLIT_MAX_TAPS = 8
_SPLIT_SUM_TAPS = 9


def _blocks_shape(tiles: jax.Array, window: tuple[int, ...]) -> tuple[int, ...]:
  """The blocks ``(N, o_1, k_1, ..., o_r, k_r, C)`` of tiles ``(N, o_1 * k_1, ..., o_r * k_r, C)``."""
  shape = [tiles.shape[0]]
  for m, k in zip(tiles.shape[1:-1], window):
    shape += [m // k, k]
  return (*shape, tiles.shape[-1])


def _first_max(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """The reducer of (value, tap) pairs that keeps the max, a NaN before any number, and the lower tap on ties.

  A total order (NaN first, then larger values, then lower taps), so the result does not depend on
  the order in which XLA combines the pairs.
  """
  (va, ia), (vb, ib) = a, b
  nan_a, nan_b = va != va, vb != vb
  tie = (va == vb) | (nan_a & nan_b)
  take_a = (va > vb) | (nan_a & ~nan_b) | (tie & (ia < ib))
  return lax.select(take_a, va, vb), lax.select(take_a, ia, ib)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_and_first(tiles: jax.Array, window: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Each window's max and its first maximal tap (row-major; a NaN wins): ``(N, *o, C)`` each, the tap int8/int32.

  One variadic reduce over the stacked taps: XLA materialises its result, so the backward pass
  reads the tap of each window instead of recomputing the window's max for every input cell.
  """
  taps = _window_taps(tiles, window)
  stacked = jnp.stack(taps, axis=-1)
  index_dtype = np.int8 if len(taps) < 128 else np.int32
  # zeros_like keeps stacked's sharding (an iota would be replicated, which Explicit axes reject).
  order = jnp.zeros_like(stacked, index_dtype) + np.arange(len(taps), dtype=index_dtype)
  inits = (np.array(-np.inf, stacked.dtype), np.array(len(taps), index_dtype))
  y, first = lax.reduce((stacked, order), inits, _first_max, (stacked.ndim - 1,))
  return y, first


def _first_tangent(tangent: jax.Array, first: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """The tangent of each window's first maximal tap: tangent ``(N, o_1 * k_1, ..., C)`` -> ``(N, *o, C)``.

  Written on the blocks, so that its transpose is one select that writes the whole input gradient.
  """
  axes = _window_axes(len(window))
  blocks = _split_rows(tangent, _blocks_shape(tangent, window))
  is_first = _tap_order(blocks, len(window)) == jnp.expand_dims(first.astype(np.int32), axes)
  return jnp.sum(jnp.where(is_first, blocks, jnp.zeros_like(blocks)), axis=axes)


@_max_and_first.defjvp
def _max_and_first_jvp(
  window: tuple[int, ...], primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """The max's tangent is its first maximal tap's; the tap (an integer) has none (a float0 zero)."""
  (tiles,), (tangent,) = primals, tangents
  y, first = _max_and_first(tiles, window)
  no_tangent = np.zeros(first.shape, jax.dtypes.float0)
  return (y, first), (_first_tangent(tangent, first, window), no_tangent)  # type: ignore[return-value]  # float0


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _taps_max(tiles: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Max over the non-overlapping windows of tiles ``(N, o_1 * k_1, ..., o_r * k_r, C)`` -> ``(N, *o, C)``.

  Forward alone: a balanced tree of elementwise maxima over the taps, no reduction at all.
  """
  return _tree(lax.max, _window_taps(tiles, window))


@_taps_max.defjvp
def _taps_max_jvp(
  window: tuple[int, ...], primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
  """The first maximal element of each window (row-major) carries the tangent, as in lax and PyTorch.

  Under differentiation the max comes from ``_max_and_first`` (its own JVP makes every order
  exact), which also gives the tap that carries the tangent.
  """
  (tiles,), (tangent,) = primals, tangents
  y, first = _max_and_first(tiles, window)
  return y, _first_tangent(tangent, first, window)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _taps_sum(tiles: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Sum over the non-overlapping windows of tiles ``(N, o_1 * k_1, ..., o_r * k_r, C)`` -> ``(N, *o, C)``.

  Forward: a balanced tree of adds over the taps. The tangent sums the blocks instead, whose
  transpose is one broadcast (the taps' would be a concatenate, slower on CPU). Still linear:
  ``jax.linear_transpose`` transposes the taps.
  """
  return _tree(lax.add, _window_taps(tiles, window))


@_taps_sum.defjvp
def _taps_sum_jvp(
  window: tuple[int, ...], primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
  """The sum of the tangent's windows, over its blocks."""
  (tiles,), (tangent,) = primals, tangents
  blocks = _split_rows(tangent, _blocks_shape(tangent, window))
  return _taps_sum(tiles, window), jnp.sum(blocks, axis=_window_axes(len(window)))


def _reduce_tiles(tiles: jax.Array, op: Callable, window: tuple[int, ...]) -> jax.Array:
  """Max (first-tie gradient) or sum over the non-overlapping windows of tiles ``(N, o_1 * k_1, ..., C)``.

  Small windows go through their taps (``_window_taps``); larger ones through the blocks.
  """
  taps = math.prod(window)
  if op is lax.max and taps <= _SPLIT_MAX_TAPS:
    return _taps_max(tiles, window)
  if op is lax.add and taps <= _SPLIT_SUM_TAPS:
    return _taps_sum(tiles, window)
  return _reduce_blocks(_split_rows(tiles, _blocks_shape(tiles, window)), op, len(window))


def _strided_blocks(xp: jax.Array, g: Window) -> jax.Array:
  """Blocks of a padded xp ``(N, *padded, C)`` that holds every window: one strided slice per tap and axis."""
  blocks = xp
  for axis, (k, s, d, o) in enumerate(zip(g.kernel, g.stride, g.dilation, g.out_spatial)):
    at = 1 + 2 * axis  # axes before it are already split into (o, k)
    taps = [lax.slice_in_dim(blocks, t * d, t * d + (o - 1) * s + 1, s, axis=at) for t in range(k)]
    blocks = jnp.stack(taps, axis=at + 1)
  return blocks


def reduce_windows(x: jax.Array, init: float, op: Callable, g: Window) -> jax.Array:
  """Reduce every window of x with ``op``, padding with ``init``.

  Args:
    x: ``(N, *spatial, C)``; a batch split over devices stays split (``docs/sharding.md``).
    init: the pad value and the reduction's identity (-inf for max, 0 for sums).
    op: ``lax.max`` or ``lax.add``.
    g: the resolved window.

  Returns:
    ``(N, *g.out_spatial, C)``.
  """
  rank = x.ndim - 2
  # A numpy scalar stays concrete under jit, so reduce_window sees a monoid (max/add with its
  # identity) and lowers to a differentiable primitive; a traced init is not differentiable.
  init_value = np.array(init, x.dtype)
  pads = [(lo, hi) for (lo, _), hi in zip(g.padding, _high_pads(g))]
  dilated = any(d > 1 for d in g.dilation)
  if not dilated and g.stride != g.kernel:
    return lax.reduce_window(x, init_value, op, (1, *g.kernel, 1), (1, *g.stride, 1), ((0, 0), *pads, (0, 0)))
  xp = lax.pad(x, init_value, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
  if dilated:
    return _reduce_blocks(_strided_blocks(xp, g), op, rank)
  tiles = xp[(slice(None), *(slice(0, o * k) for o, k in zip(g.out_spatial, g.kernel)))]
  return _reduce_tiles(tiles, op, tuple(g.kernel))


def _widened(x: jax.Array, pool: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """``pool`` run on x in its accumulation dtype (float32 for 16-bit floats), its result cast back.

  Sums accumulate in float32, as the kernels do. A max, its first-tie rule and its gradient are
  exact in any wider type, and XLA:CPU reduces and selects 16-bit floats 3-4x slower than float32
  (LeNet's 2x2 max pools, forward + backward).
  """
  wide = kernels.accumulation_dtype(x.dtype)
  return pool(x) if wide == x.dtype else pool(x.astype(wide)).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# window pools


def max_pool(
  x: object,
  window: int | Sequence[int],
  stride: int | Sequence[int] | None = None,
  padding: Padding = "valid",
  dilation: int | Sequence[int] = 1,
  ceil_mode: bool = False,
) -> jax.Array:
  """Max over each window, as ``torch.nn.MaxPool``: pads (and ceil_mode's overhang) count as -inf.

  Args:
    x: the input, shape ``(N, *spatial, C)`` with 1-3 spatial axes.
    window: the window, an int (every axis) or one int per spatial axis.
    stride: an int or one int per axis; None: the window.
    padding: ``"valid"``, ``"same"`` (lax's rule), ``"full"``, an int, one int per axis, or one
      ``(lo, hi)`` pair per axis.
    dilation: an int or one int per axis: the window's taps ``d`` cells apart.
    ceil_mode: keep a last, partial window on an axis (PyTorch's ``ceil_mode``).

  Returns:
    ``(N, *out_spatial, C)``; each window's gradient goes to its first maximal element.

  Raises:
    ValueError: a bad ``window``, ``stride``, ``padding`` or ``dilation``, a wrong rank, or a
      window larger than the padded input; the message names the argument.
    TypeError: an argument of the wrong type.

  Example:
    >>> import numpy as np
    >>> import jaxconv as jc
    >>> jc.max_pool(np.arange(16.0).reshape(1, 4, 4, 1), 2)[0, :, :, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
  """
  (xa,) = promote(x=x)
  assert xa is not None
  g = pool_window(xa, window, stride, padding, dilation, ceil_mode)
  return _widened(xa, lambda wide: reduce_windows(wide, -jnp.inf, lax.max, g))


def avg_pool(
  x: object,
  window: int | Sequence[int],
  stride: int | Sequence[int] | None = None,
  padding: Padding = "valid",
  count_include_pad: bool = True,
  ceil_mode: bool = False,
) -> jax.Array:
  """Mean over each window, as ``torch.nn.AvgPool``: pads count as zeros.

  Args:
    x: the input, shape ``(N, *spatial, C)`` with 1-3 spatial axes.
    window: the window, an int (every axis) or one int per spatial axis.
    stride: an int or one int per axis; None: the window.
    padding: ``"valid"``, ``"same"`` (lax's rule), ``"full"``, an int, one int per axis, or one
      ``(lo, hi)`` pair per axis.
    count_include_pad: divide by the window's cells inside the padded input (True: the whole
      window unless ceil_mode's last one overhangs) or by its real cells only (False).
    ceil_mode: keep a last, partial window on an axis (PyTorch's ``ceil_mode``).

  Returns:
    ``(N, *out_spatial, C)``, in x's float dtype (accumulated in float32 for bfloat16).

  Raises:
    ValueError: a bad ``window``, ``stride`` or ``padding``, a wrong rank, or a window larger
      than the padded input; the message names the argument.
    TypeError: an argument of the wrong type (``count_include_pad`` not a bool).

  Example:
    >>> import numpy as np
    >>> import jaxconv as jc
    >>> jc.avg_pool(np.ones((1, 3, 3, 1)), 2, stride=1, padding=1, count_include_pad=False)[0, 0, :, 0].tolist()
    [1.0, 1.0, 1.0, 1.0]
  """
  (xa,) = promote(x=x)
  assert xa is not None
  include = check_bool(count_include_pad, "count_include_pad")
  g = pool_window(xa, window, stride, padding, 1, ceil_mode)
  acc = kernels.accumulation_dtype(xa.dtype)
  counts = window_counts(g, include)
  divisor = np.asarray(g.taps, acc) if (counts == g.taps).all() else counts.astype(acc)[..., None]
  return _widened(xa, lambda wide: reduce_windows(wide, 0.0, lax.add, g) / divisor)


# --------------------------------------------------------------------------------------------
# adaptive pools


def adaptive_cells(n: int, o: int) -> tuple[np.ndarray, np.ndarray]:
  """PyTorch's adaptive cells of one axis: cell ``i`` covers ``[floor(i * n / o), ceil((i + 1) * n / o))``."""
  i = np.arange(o)
  return (i * n) // o, -((-(i + 1) * n) // o)


def adaptive_output_size(spatial: Sequence[int], output_size: object) -> tuple[int, ...]:
  """``output_size`` (an int, or one int or None per axis; None keeps the input size) as a tuple of ints >= 1."""
  rank = len(spatial)
  sizes = output_size
  if isinstance(output_size, Sequence) and not isinstance(output_size, str):
    if len(output_size) != rank:
      raise ValueError(
        f"output_size must be an int or a sequence of {rank} sizes (one per spatial axis); got {output_size!r}"
      )
    sizes = [n if o is None else o for n, o in zip(spatial, output_size)]
  elif not is_int(output_size):
    raise TypeError(
      f"output_size must be an int or a sequence of {rank} ints (or None); "
      f"got {type(output_size).__name__}: {output_size!r}"
    )
  values = normalize_ints(sizes, rank, "output_size", minimum=-(2**63))  # type: ignore[arg-type]  # ints, one per axis
  if min(values) < 1:  # named with the caller's value (None entries included)
    raise ValueError(f"output_size must be >= 1 on every axis; got {output_size!r}")
  return values


def _adaptive_blocks(x: jax.Array, out: Sequence[int], fill: float) -> jax.Array:
  """Blocks ``(N, o_1, k_1, ..., C)`` of PyTorch's adaptive cells, ``k`` the widest; short cells padded by ``fill``."""
  blocks = x
  for axis, (n, o) in enumerate(zip(x.shape[1:-1], out)):
    at = 1 + 2 * axis
    if n % o == 0:  # even cells: a reshape
      blocks = _split_rows(blocks, (*blocks.shape[:at], o, n // o, *blocks.shape[at + 1 :]))
      continue
    starts, ends = adaptive_cells(n, o)
    width = int((ends - starts).max())
    index = starts[:, None] + np.arange(width)
    inside = index < ends[:, None]
    blocks = jnp.take(blocks, np.minimum(index, n - 1), axis=at)
    mask = inside.reshape(o, width, *(1,) * (blocks.ndim - at - 2))
    blocks = jnp.where(mask, blocks, np.array(fill, blocks.dtype))
  return blocks


def _even_cells(x: jax.Array, out: Sequence[int]) -> tuple[int, ...] | None:
  """The window of adaptive cells that split x ``(N, *spatial, C)`` evenly (every ``n % o == 0``), else None."""
  spatial = x.shape[1:-1]
  return tuple(n // o for n, o in zip(spatial, out)) if all(n % o == 0 for n, o in zip(spatial, out)) else None


def _adaptive_call(x: object, output_size: object) -> tuple[jax.Array, tuple[int, ...]]:
  """Validate an adaptive pool's call: x ``(N, *spatial, C)`` as a float array, and the output size."""
  (xa,) = promote(x=x)
  assert xa is not None
  check_rank("x", xa, (3, 4, 5), "(N, *spatial, C) with 1-3 spatial axes")
  out = adaptive_output_size(xa.shape[1:-1], output_size)
  if 0 in xa.shape[1:-1]:
    raise ValueError(f"x must have a non-empty spatial shape for adaptive pooling; got shape {tuple(xa.shape)}")
  return xa, out


def adaptive_max_pool(x: object, output_size: int | Sequence[int | None]) -> jax.Array:
  """Max over PyTorch's adaptive cells (``torch.nn.AdaptiveMaxPool``).

  Cell ``i`` of an axis of length ``n`` covers ``[floor(i * n / o), ceil((i + 1) * n / o))``,
  for any ``o >= 1`` (dividing ``n`` or not); the gradient goes to each cell's first maximum.

  Args:
    x: the input, shape ``(N, *spatial, C)`` with 1-3 spatial axes.
    output_size: an int (every axis), or one int or None per axis (None keeps that axis).

  Returns:
    ``(N, *output_size, C)``.

  Raises:
    ValueError: a bad ``output_size`` or a wrong rank, naming the argument.
    TypeError: an argument of the wrong type.

  Example:
    >>> import numpy as np
    >>> import jaxconv as jc
    >>> jc.adaptive_max_pool(np.arange(5.0).reshape(1, 5, 1), 2)[0, :, 0].tolist()
    [2.0, 4.0]
  """
  xa, out = _adaptive_call(x, output_size)
  window = _even_cells(xa, out)

  def pool(wide: jax.Array) -> jax.Array:
    if window:  # windows of n // o cells at stride n // o: the window pools' reduction
      return _reduce_tiles(wide, lax.max, window)
    return _block_max(_adaptive_blocks(wide, out, -jnp.inf), len(out))

  return _widened(xa, pool)


def adaptive_avg_pool(x: object, output_size: int | Sequence[int | None]) -> jax.Array:
  """Mean over PyTorch's adaptive cells (``torch.nn.AdaptiveAvgPool``), as ``adaptive_max_pool``'s.

  Args:
    x: the input, shape ``(N, *spatial, C)`` with 1-3 spatial axes.
    output_size: an int (every axis), or one int or None per axis (None keeps that axis).

  Returns:
    ``(N, *output_size, C)``; ``output_size=1`` is global average pooling.

  Raises:
    ValueError: a bad ``output_size`` or a wrong rank, naming the argument.
    TypeError: an argument of the wrong type.

  Example:
    >>> import numpy as np
    >>> import jaxconv as jc
    >>> jc.adaptive_avg_pool(np.arange(5.0).reshape(1, 5, 1), 2)[0, :, 0].tolist()
    [1.0, 3.0]
  """
  xa, out = _adaptive_call(x, output_size)
  window = _even_cells(xa, out)
  sizes = [np.subtract(*adaptive_cells(n, o)[::-1]) for n, o in zip(xa.shape[1:-1], out)]
  cells = functools.reduce(np.multiply.outer, sizes)

  def mean(wide: jax.Array) -> jax.Array:
    if window:  # the window pools' reduction, as in adaptive_max_pool
      sums = _reduce_tiles(wide, lax.add, window)
    else:
      sums = jnp.sum(_adaptive_blocks(wide, out, 0.0), axis=_window_axes(len(out)))
    return sums / cells.astype(wide.dtype)[..., None]

  return _widened(xa, mean)


__all__ = [
  "adaptive_avg_pool",
  "adaptive_cells",
  "adaptive_max_pool",
  "adaptive_output_size",
  "avg_pool",
  "max_pool",
  "pool_geometry",
  "pool_window",
  "reduce_windows",
  "window_counts",
]
