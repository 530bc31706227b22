"""Winograd minimal-filtering kernel F(m, 3) for 3-tap, stride-1, undilated convolutions (any rank).

Per spatial axis the output is cut into tiles of ``m``; a tile of ``m + 2`` inputs ``d`` and the
3 taps ``g`` give the ``m`` outputs ``A^T [(G g) * (B^T d)]`` (Lavin & Gray 2015). Over ``r`` axes
the transforms apply axis by axis, and the channel mixing becomes ``(m + 2)^r`` independent GEMMs
``(tiles, C_in) @ (C_in, C_out)`` instead of ``9 m^2`` multiply-adds per tile in 2-D: 2.25x fewer
multiplications for F(2, 3), 4x for F(4, 3). The transforms are strided slices and fixed linear
combinations (fused elementwise), and the batch is chunked so the transformed tiles fit
``TILE_BUDGET_BYTES``. The backward pass is written out (autodiff through the transforms is 5x
slower): dx is the Winograd conv of the padded dy with the flipped kernel, and dW is
``G^T [sum over tiles of V^T (A dy A^T)] G``, one more set of ``(m + 2)^r`` GEMMs.

F(4, 3)'s transforms have entries up to 8 and 1/24: its float32 error against lax is a few 1e-6
of ``max |y|`` in 2-D and ~1e-5 in 3-D, about ten times F(2, 3)'s (``tests/test_kernels.py``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.registry import accumulation_dtype, register
from jaxconv.kernels.taps import batch_chunk, dy_padding, map_batch, pad_spatial, sum_batch, transposed_kernel

# Output tile per axis: 4 -> F(4, 3) (6x6 tiles in 2-D), 2 -> F(2, 3) (4x4 tiles).
TILE = 4
# Upper bound on the bytes of one chunk's transformed input tiles.
TILE_BUDGET_BYTES = 4 * 2**20

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
      [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
      ],
      np.float64,
    ),
    np.array(
      [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
      ],
      np.float64,
    ),
    np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64),
  ),
}


def supports_winograd(spec: ConvGeometry) -> str | None:
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


def tile_transform(v: jax.Array, tiles, m: int, matrix: np.ndarray) -> jax.Array:
  """Cut each spatial axis into ``tiles`` windows of ``matrix.shape[1]`` at stride ``m`` and apply ``matrix``.

  ``(N, *spatial, C)`` -> ``(alpha^r, N, *tiles, C)``; the first axis's alpha is the most
  significant. Each alpha is a fixed combination of strided slices, so XLA fuses it.
  """
  v = v[None]  # the leading axis collects the alpha indices, axis by axis
  for axis, t in enumerate(tiles):
    strided = [lax.slice_in_dim(v, j, j + (t - 1) * m + 1, m, axis + 2) for j in range(matrix.shape[1])]
    rows = [functools.reduce(jnp.add, [c * strided[j] for j, c in enumerate(row) if c]) for row in matrix]
    v = jnp.stack(rows, axis=1)  # (alphas so far, alpha, N, ...)
    v = v.reshape(-1, *v.shape[2:])
  return v


def untile_transform(mt: jax.Array, tiles, m: int, matrix: np.ndarray) -> jax.Array:
  """Apply ``matrix`` (``m x alpha``) per axis, tiles side by side: ``(alpha^r, N, *t, C)`` -> ``(N, *(t m), C)``."""
  alpha = matrix.shape[1]
  rank = len(tiles)
  y = mt.reshape(*(alpha,) * rank, *mt.shape[1:])
  for _ in range(rank):
    # The leading alpha axis belongs to the next spatial axis; the other alphas and N precede the
    # spatial axes, so that axis's tile index sits at position ``rank`` once the alpha is gone.
    rows = jnp.stack([functools.reduce(jnp.add, [c * y[a] for a, c in enumerate(row) if c]) for row in matrix], axis=-1)
    rows = jnp.moveaxis(rows, -1, rank + 1)  # (..., t, m, ...)
    y = rows.reshape(*rows.shape[:rank], rows.shape[rank] * m, *rows.shape[rank + 2 :])
  return y


def kernel_transform(w: jax.Array, matrix: np.ndarray) -> jax.Array:
  """``matrix w matrix^T`` on every spatial axis of w ``(*kernel, I, O)`` -> ``(prod(matrix rows), I, O)``."""
  g = jnp.asarray(matrix, w.dtype)
  rank = w.ndim - 2
  for axis in range(rank):
    w = jnp.moveaxis(jnp.tensordot(g, w, axes=((1,), (axis,))), 0, axis)
  return w.reshape(-1, *w.shape[-2:])


def tiled_input(x: jax.Array, padding, m: int) -> tuple[jax.Array, list[int]]:
  """x ``(B, *spatial, C)`` -> its transformed tiles ``(alpha^r, B, *t, C)`` and the tile counts ``t``."""
  spatial = x.shape[1:-1]
  tiles = tile_counts(spatial, padding, m)
  extra = [(lo, hi + t * m + 2 - (n + lo + hi)) for n, (lo, hi), t in zip(spatial, padding, tiles)]  # whole tiles
  return tile_transform(pad_spatial(x, extra), tiles, m, TRANSFORMS[m][0]), tiles


def forward_chunk(x: jax.Array, w: jax.Array, padding, groups: int, m: int) -> jax.Array:
  """The conv of one batch chunk ``(B, *spatial, C_in)`` -> ``(B, *out, C_out)``, in x's dtype."""
  v, tiles = tiled_input(x, padding, m)  # (A, B, *t, C_in)
  a = v.shape[0]
  c_in, c_out = x.shape[-1], w.shape[-1]
  u = kernel_transform(w, TRANSFORMS[m][1]).reshape(a, c_in // groups, groups, c_out // groups)
  mt = jnp.einsum("amgc,acgo->amgo", v.reshape(a, -1, groups, c_in // groups), u).reshape(a, x.shape[0], *tiles, c_out)
  y = untile_transform(mt, tiles, m, TRANSFORMS[m][2])
  out = [n + lo + hi - 2 for n, (lo, hi) in zip(x.shape[1:-1], padding)]
  return y[(slice(None), *(slice(0, o) for o in out), slice(None))]


def kernel_grad_chunk(x: jax.Array, dy: jax.Array, padding, groups: int, m: int) -> jax.Array:
  """One chunk's kernel gradient in the Winograd domain, ``(alpha^r, C_in/G, C_out)``: ``V^T @ (A dy A^T)``."""
  v, tiles = tiled_input(x, padding, m)
  # dy's tiles, zero-padded to whole tiles and mapped back through the output transform A^T.
  whole = pad_spatial(dy, [(0, t * m - o) for t, o in zip(tiles, dy.shape[1:-1])])
  dm = tile_transform(whole, tiles, m, TRANSFORMS[m][2].T)  # (A, B, *t, C_out)
  a, c_in, c_out = v.shape[0], x.shape[-1], dy.shape[-1]
  du = jnp.einsum(
    "amgc,amgo->acgo", v.reshape(a, -1, groups, c_in // groups), dm.reshape(a, -1, groups, c_out // groups)
  )
  return du.reshape(a, c_in // groups, c_out)


def chunk_size(x_shape, padding, dtype, m: int) -> int:
  """Images per chunk: the largest batch divisor whose transformed tiles fit ``TILE_BUDGET_BYTES``."""
  tiles = tile_counts(x_shape[1:-1], padding, m)
  per_image = (m + 2) ** len(tiles) * math.prod(tiles) * x_shape[-1] * np.dtype(dtype).itemsize
  return batch_chunk(x_shape[0], per_image, TILE_BUDGET_BYTES)


def tiled_conv(x: jax.Array, w: jax.Array, padding, groups: int, m: int) -> jax.Array:
  """The batch-chunked Winograd conv of x and w (both in the accumulation dtype)."""
  return map_batch(lambda xc: forward_chunk(xc, w, padding, groups, m), chunk_size(x.shape, padding, x.dtype, m), x)


def forward(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """Winograd F(4, 3) (or F(2, 3)) tiles for 3-tap, stride-1 convs of any rank; batch-chunked."""
  acc = accumulation_dtype(x.dtype)
  return tiled_conv(x.astype(acc), w.astype(acc), g.padding, g.groups, TILE).astype(x.dtype)


def input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """dx: the Winograd conv of the padded dy with the flipped kernel."""
  acc = accumulation_dtype(dy.dtype)
  dyp = lax.pad(dy.astype(acc), jnp.zeros((), acc), dy_padding(g))
  return tiled_conv(dyp, transposed_kernel(w.astype(acc), g.groups), ((0, 0),) * g.rank, g.groups, TILE).astype(
    dy.dtype
  )


def kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """dW: ``G^T (V^T A dy A^T) G``, summed over batch chunks (autodiff through the transforms is ~5x slower)."""
  acc, m = accumulation_dtype(x.dtype), TILE
  x, dy = x.astype(acc), dy.astype(acc)
  chunk = chunk_size(x.shape, g.padding, x.dtype, m)
  du = sum_batch(lambda xc, dyc: kernel_grad_chunk(xc, dyc, g.padding, g.groups, m), chunk, x, dy)
  dw = kernel_transform(du.reshape(*(m + 2,) * g.rank, *du.shape[1:]), TRANSFORMS[m][1].T)
  return dw.reshape(g.w_shape).astype(g.dtype)


# Local: no. An inf or NaN input reaches every output of its (m + 2)-wide tiles through B^T.
register("winograd", input_grad=input_grad, kernel_grad=kernel_grad, supports=supports_winograd, local=False)(forward)

__all__ = ["TILE", "forward", "input_grad", "kernel_grad", "supports_winograd"]
