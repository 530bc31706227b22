"""Pooling: max and average over windows of channels-last batches.

Windows are resolved once into a ``Window`` (``jaxconv.geometry``), so pools validate and size
their outputs exactly as convolutions do. Non-overlapping windows (stride == window) are reduced
by a reshape, whose gradient is far cheaper on CPU than the ``select_and_scatter`` that
``lax.reduce_window`` lowers to; max pooling gives a window's whole gradient to its first
maximal element either way, as lax and PyTorch do.

>>> import jaxconv as jc
>>> jc.max_pool(np.arange(16.0).reshape(1, 4, 4, 1), 2)[0, ..., 0].tolist()
[[5.0, 7.0], [13.0, 15.0]]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import kernels
from jaxconv.geometry import Padding, Window, check_bool, resolve_window
from jaxconv.ops import check_rank, promote


def pool_window(x: jax.Array, window: int | Sequence[int], stride: int | Sequence[int] | None, padding: Padding) -> Window:
  """Validate a pooling call on x ``(N, *spatial, C)``: the resolved window (stride defaults to it)."""
  check_rank("x", x, (3, 4, 5), "(N, *spatial, C) with 1-3 spatial axes")
  geometry = resolve_window(x.shape[1:-1], window, padding, stride, kernel_name="window")
  # As in PyTorch: a pad as wide as the window would make windows that see only padding.
  if any(lo >= k or hi >= k for (lo, hi), k in zip(geometry.padding, geometry.kernel)):
    raise ValueError(f"padding must be smaller than the window on each side; got pads {geometry.padding} for window {geometry.kernel}")
  return geometry


def _window_axes(rank: int) -> tuple[int, ...]:
  """The window axes of blocks ``(N, o_1, k_1, ..., o_r, k_r, C)``."""
  return tuple(range(2, 2 * rank + 1, 2))


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
  window = tuple(blocks.shape[a] for a in axes)
  order_shape = [1] * blocks.ndim
  for a, k in zip(axes, window):
    order_shape[a] = k
  order = np.arange(math.prod(window)).reshape(order_shape)
  first = jnp.min(jnp.where(blocks == y, order, order.size), axis=axes, keepdims=True)
  return jnp.squeeze(y, axes), jnp.sum(jnp.where(order == first, tangent, 0), axis=axes)


def reduce_windows(x: jax.Array, init: float, op: Callable, g: Window) -> jax.Array:
  """Reduce every window of x ``(N, *spatial, C)`` with ``op`` (``lax.max`` or ``lax.add``), padding with ``init``."""
  rank = x.ndim - 2
  # A numpy scalar stays concrete under jit, so reduce_window sees a monoid (max/add with its
  # identity) and lowers to a differentiable primitive; a traced init is not differentiable.
  init_value = np.array(init, x.dtype)
  out = g.out_spatial
  if g.stride == g.kernel:
    xp = lax.pad(x, init_value, [(0, 0, 0), *((lo, hi, 0) for lo, hi in g.padding), (0, 0, 0)])
    xp = xp[(slice(None), *(slice(0, o * k) for o, k in zip(out, g.kernel)))]
    split = [x.shape[0]]
    for o, k in zip(out, g.kernel):
      split += [o, k]
    xp = xp.reshape(*split, x.shape[-1])
    return _block_max(xp, rank) if op is lax.max else jnp.sum(xp, axis=_window_axes(rank))
  return lax.reduce_window(x, init_value, op, (1, *g.kernel, 1), (1, *g.stride, 1), ((0, 0), *g.padding, (0, 0)))


def max_pool(x: object, window: int | Sequence[int], stride: int | Sequence[int] | None = None, padding: Padding = "valid") -> jax.Array:
  """Max over each window of x ``(N, *spatial, C)``; pads count as -inf; stride defaults to window."""
  (xa,) = promote(x=x)
  assert xa is not None
  return reduce_windows(xa, -jnp.inf, lax.max, pool_window(xa, window, stride, padding))


def window_counts(g: Window) -> np.ndarray:
  """How many real (non-pad) input cells each pooling window covers, shape ``out_spatial``."""
  per_axis = []
  for n, k, s, (lo, _), o in zip(g.spatial, g.kernel, g.stride, g.padding, g.out_spatial):
    starts = np.arange(o) * s - lo
    per_axis.append(np.minimum(starts + k, n) - np.maximum(starts, 0))
  counts = per_axis[0]
  for c in per_axis[1:]:
    counts = np.multiply.outer(counts, c)
  return counts


def avg_pool(
    x: object,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = "valid",
    count_include_pad: bool = True,
) -> jax.Array:
  """Mean over each window of x ``(N, *spatial, C)``; pads count as zeros unless excluded."""
  (xa,) = promote(x=x)
  assert xa is not None
  include = check_bool(count_include_pad, "count_include_pad")
  g = pool_window(xa, window, stride, padding)
  acc = kernels.accumulation_dtype(xa.dtype)
  sums = reduce_windows(xa.astype(acc), 0.0, lax.add, g)
  divisor = np.asarray(g.taps, acc) if include else window_counts(g).astype(acc)[..., None]
  return (sums / divisor).astype(xa.dtype)


__all__ = ["avg_pool", "max_pool", "pool_window", "reduce_windows", "window_counts"]
