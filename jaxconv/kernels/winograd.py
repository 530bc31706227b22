"""Winograd minimal-filtering kernel F(m, 3) for 3-tap, stride-1, undilated convolutions (any rank).

Per spatial axis the output is cut into tiles of ``m``; a tile of ``m + 2`` inputs ``d`` and the
3 taps ``g`` give the ``m`` outputs ``A^T [(G g) * (B^T d)]`` (Lavin & Gray 2015). Over ``r`` axes
the transforms apply axis by axis, and the channel mixing becomes ``(m + 2)^r`` independent GEMMs
``(tiles, C_in) @ (C_in, C_out)`` instead of ``9 m^2`` multiply-adds per tile in 2-D: 2.25x fewer
multiplications for F(2, 3), 4x for F(4, 3). The transforms are strided slices and fixed linear
combinations (fused elementwise); gradients come from autodiff, the batch is chunked so the
transformed tiles fit ``TILE_BUDGET_BYTES``.

F(4, 3)'s transform has entries up to 5 and 1/24: its float32 error against lax is a few 1e-6
of ``max |y|`` in 2-D, about ten times F(2, 3)'s (``tests/test_kernels.py`` measures both).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.kernels.registry import ConvSpec, accumulation_dtype, register
from jaxconv.kernels.taps import batch_chunk, map_batch, pad_spatial

# Output tile per axis: 4 -> F(4, 3) (6x6 tiles in 2-D), 2 -> F(2, 3) (4x4 tiles).
TILE = 4
# Upper bound on the bytes of one chunk's transformed input tiles.
TILE_BUDGET_BYTES = 8 * 2**20

# (B^T, G, A^T) per output tile size m, for correlation with 3 taps (Lavin & Gray, "Fast
# Algorithms for Convolutional Neural Networks", 2015).
TRANSFORMS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array(
            [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
            np.float64,
        ),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64),
    ),
}


def supports_winograd(spec: ConvSpec) -> str | None:
  """Accept 3 taps on every axis, stride 1 and dilation 1."""
  if any(k != 3 for k in spec.kernel):
    return f"it needs a 3-tap kernel on every axis; got kernel {spec.kernel}"
  if any(s != 1 for s in spec.stride):
    return f"it needs stride 1; got {spec.stride}"
  if any(d != 1 for d in spec.dilation):
    return f"it needs dilation 1; got {spec.dilation}"
  return None


def tile_counts(spatial, padding, m: int) -> list[int]:
  """Tiles per axis: ``ceil(out / m)`` with ``out = n + lo + hi - 2``."""
  return [-(-(n + lo + hi - 2) // m) for n, (lo, hi) in zip(spatial, padding)]


def input_transform(xp: jax.Array, tiles, m: int) -> jax.Array:
  """Padded x ``(N, *(t m + 2), C)`` -> transformed tiles ``(alpha^r, N, *t, C)``, ``alpha = m + 2``."""
  bt = TRANSFORMS[m][0]
  v = xp[None]  # the leading axis collects the alpha indices, axis by axis
  for axis, t in enumerate(tiles):
    ax = axis + 2
    strided = [lax.slice_in_dim(v, j, j + (t - 1) * m + 1, m, ax) for j in range(m + 2)]
    rows = [functools.reduce(jnp.add, [c * strided[j] for j, c in enumerate(row) if c]) for row in bt]
    v = jnp.stack(rows, axis=1)  # (alphas so far, alpha, N, ...)
    v = v.reshape(-1, *v.shape[2:])  # the first axis's alpha is the most significant
  return v


def output_transform(mt: jax.Array, tiles, out, m: int) -> jax.Array:
  """Products ``(alpha^r, N, *t, C)`` -> output ``(N, *out, C)`` (tiles laid side by side, cropped)."""
  at = TRANSFORMS[m][2]
  alpha = m + 2
  rank = len(tiles)
  y = mt.reshape(*(alpha,) * rank, *mt.shape[1:])
  for _ in range(rank):
    # The leading alpha axis belongs to the next spatial axis; the other alphas and N precede the
    # spatial axes, so that axis's tile index sits at position ``rank`` once the alpha is gone.
    rows = jnp.stack([functools.reduce(jnp.add, [c * y[a] for a, c in enumerate(row) if c]) for row in at], axis=-1)
    rows = jnp.moveaxis(rows, -1, rank + 1)  # (..., t, m, ...)
    y = rows.reshape(*rows.shape[:rank], rows.shape[rank] * m, *rows.shape[rank + 2 :])
  crop = tuple(slice(0, o) for o in out)
  return y[(slice(None), *crop, slice(None))]


def kernel_transform(w: jax.Array, m: int) -> jax.Array:
  """w ``(*(3,)^r, C_in/G, C_out)`` -> ``(alpha^r, C_in/G, C_out)`` (``G w G^T`` per axis)."""
  g = jnp.asarray(TRANSFORMS[m][1], w.dtype)
  rank = w.ndim - 2
  u = w
  for axis in range(rank):
    u = jnp.moveaxis(jnp.tensordot(g, u, axes=((1,), (axis,))), 0, axis)
  return u.reshape(-1, *w.shape[-2:])


def winograd_chunk(x: jax.Array, w: jax.Array, padding, groups: int, m: int) -> jax.Array:
  """The conv of one batch chunk ``(B, *spatial, C_in)`` -> ``(B, *out, C_out)`` in the accumulation dtype."""
  rank = x.ndim - 2
  spatial = x.shape[1:-1]
  tiles = tile_counts(spatial, padding, m)
  extra = [(lo, hi + t * m + 2 - (n + lo + hi)) for n, (lo, hi), t in zip(spatial, padding, tiles)]
  v = input_transform(pad_spatial(x, extra), tiles, m)  # (A, B, *t, C_in)
  a, n = v.shape[0], v.shape[1]
  c_in, c_out = x.shape[-1], w.shape[-1]
  v = v.reshape(a, -1, groups, c_in // groups)
  u = kernel_transform(w, m).reshape(a, c_in // groups, groups, c_out // groups)
  mt = jnp.einsum("amgc,acgo->amgo", v, u)
  mt = mt.reshape(a, n, *tiles, c_out)
  out = [s + lo + hi - 2 for s, (lo, hi) in zip(spatial, padding)]
  return output_transform(mt, tiles, out, m)


@register("winograd", supports=supports_winograd)
def conv_winograd(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """Winograd F(4, 3) (or F(2, 3)) tiles for 3-tap, stride-1 convs of any rank; batch-chunked."""
  del stride, dilation  # 1 on every axis (supports_winograd)
  acc = accumulation_dtype(x.dtype)
  m = TILE
  tiles = tile_counts(x.shape[1:-1], padding, m)
  per_image = (m + 2) ** len(tiles) * math.prod(tiles) * x.shape[-1] * acc.itemsize
  chunk = batch_chunk(x.shape[0], per_image, TILE_BUDGET_BYTES)
  y = map_batch(lambda xc: winograd_chunk(xc.astype(acc), w.astype(acc), padding, groups, m), chunk, x)
  return y.astype(x.dtype)
