"""Patch-matrix kernel: strided-slice gather of the taps, GEMMs per group, hand-written VJP.

The forward pass lays the ``K = prod(kernel)`` taps of every output position side by side into
a patch matrix ``(G, M, K * C_in / G)`` (``M = N * prod(out_spatial)``) and contracts it with the
kernel matrix ``(G, K * C_in / G, C_out / G)`` in one GEMM; with 32 or more channels per group
each tap gets its own GEMM instead, which skips writing and re-reading the ``K``-times larger
matrix. The backward pass does not differentiate through the gather (whose transpose is ``K``
scattered pads): the input gradient is one GEMM ``dy @ W^T`` followed by col2im (the ``K``
shifted, stride-dilated pads of that product, summed in one fusion), the kernel gradient
``patches^T @ dy`` with the patches gathered transposed (from channels-first x), the layout
in which that GEMM runs at full speed.

Memory is bounded: the batch is processed in chunks whose patch matrix fits
``PATCH_BUDGET_BYTES``, so peak memory stays near lax's instead of ``K`` copies of the input; a
patch matrix that fits in one chunk is kept for the backward pass instead of gathered again.
Large temporaries are slow on this CPU as well: buffers past glibc's mmap threshold (32 MiB) are
page-faulted afresh on every call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.kernels.registry import accumulation_dtype, register
from jaxconv.kernels.taps import Geometry, batch_chunk, geometry_of, map_batch, out_spatial, pad_spatial, sum_batch, tap_pad_config, tap_slice, taps

# Upper bound on the bytes of one chunk's patch matrix (and of its gradient in the backward).
PATCH_BUDGET_BYTES = 16 * 2**20
# Channels per group from which each tap gets its own GEMM instead of one patch-matrix GEMM.
TAP_GEMM_MIN_DEPTH = 32

def tap_columns(x: jax.Array, kernel: Sequence[int], geometry: Geometry) -> list[jax.Array]:
  """Per tap, what it reads for every output, as a GEMM operand ``(G, N * prod(out), C / G)``."""
  stride, padding, dilation, groups = geometry
  out = out_spatial(x.shape, kernel, geometry)
  xp = pad_spatial(x, padding)
  c = x.shape[-1]
  return [jnp.moveaxis(tap_slice(xp, tap, stride, dilation, out).reshape(-1, groups, c // groups), 1, 0) for tap in taps(kernel)]


def tap_rows(x: jax.Array, kernel: Sequence[int], geometry: Geometry) -> list[jax.Array]:
  """Per tap, the transposed operand ``(G, C / G, N * prod(out))``, sliced from channels-first x.

  ``patches^T @ dy`` runs at GEMM speed with this layout, at half speed or worse when the GEMM
  has to contract the major axis of a ``(M, C / G)`` operand.
  """
  stride, padding, dilation, groups = geometry
  out = out_spatial(x.shape, kernel, geometry)
  xt = jnp.pad(jnp.moveaxis(x, -1, 0), ((0, 0), (0, 0), *padding))  # (C, N, *padded)
  c = x.shape[-1]
  rows = []
  for tap in taps(kernel):
    start = (0, 0, *(t * d for t, d in zip(tap, dilation)))
    limit = (c, x.shape[0], *(t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, dilation, out, stride)))
    rows.append(lax.slice(xt, start, limit, (1, 1, *stride)).reshape(groups, c // groups, -1))
  return rows


def tap_by_tap(c_in: int, groups: int) -> bool:
  """Whether to run one GEMM per tap (deep enough per-tap contraction) instead of one patch-matrix GEMM.

  Per-tap GEMMs skip writing and re-reading the ``K``-times larger patch matrix; below
  ``TAP_GEMM_MIN_DEPTH`` channels per group their contraction is too short to run at GEMM speed.
  """
  return c_in // groups >= TAP_GEMM_MIN_DEPTH


def scatter_patches(dp: jax.Array, x_shape: Sequence[int], kernel: Sequence[int], geometry: Geometry) -> jax.Array:
  """col2im, the transpose of the tap gather: ``(G, M, K * C / G)`` -> ``(N, *spatial, C)``."""
  stride, padding, dilation, groups = geometry
  n, *spatial, c = x_shape
  out = out_spatial(x_shape, kernel, geometry)
  dp = dp.reshape(groups, n, *out, math.prod(kernel), c // groups)
  dp = jnp.moveaxis(dp, 0, -2).reshape(n, *out, -1, c)  # (N, *out, K, C)
  zero = jnp.zeros((), dp.dtype)
  terms = [lax.pad(dp[..., i, :], zero, tap_pad_config(tap, spatial, stride, padding, dilation, out)) for i, tap in enumerate(taps(kernel))]
  return functools.reduce(jnp.add, terms)


def kernel_matrix(w: jax.Array, groups: int) -> jax.Array:
  """w ``(*kernel, C_in / G, C_out)`` -> ``(G, K * C_in / G, C_out / G)``."""
  *kernel, cg, c_out = w.shape
  w = w.reshape(math.prod(kernel), cg, groups, c_out // groups)
  return jnp.moveaxis(w, 2, 0).reshape(groups, -1, c_out // groups)


def kernel_from_matrix(wm: jax.Array, w_shape: Sequence[int]) -> jax.Array:
  """The inverse of ``kernel_matrix``: ``(G, K * C_in / G, C_out / G)`` -> ``w_shape``."""
  groups, _, og = wm.shape
  *kernel, cg, _ = w_shape
  wm = wm.reshape(groups, math.prod(kernel), cg, og)
  return jnp.moveaxis(wm, 0, 2).reshape(w_shape)


def grouped_columns(y: jax.Array, groups: int) -> jax.Array:
  """``(N, *S, C)`` -> ``(G, N * prod(S), C / G)``."""
  return jnp.moveaxis(y.reshape(-1, groups, y.shape[-1] // groups), 1, 0)


def forward_chunk(x: jax.Array, w: jax.Array, geometry: Geometry) -> tuple[jax.Array, jax.Array | None]:
  """The conv of one batch chunk x ``(B, *spatial, C_in)`` -> ``(B, *out, C_out)`` in x's dtype, and
  the patch matrix ``(G, M, K * C_in / G)`` when one was built (None when tap by tap)."""
  groups = geometry[3]
  kernel = w.shape[:-2]
  acc = accumulation_dtype(x.dtype)
  wm = kernel_matrix(w, groups)  # (G, K * C_in / G, C_out / G)
  cols = tap_columns(x, kernel, geometry)
  dims = (((2,), (1,)), ((0,), (0,)))
  if tap_by_tap(x.shape[-1], groups):
    cg = x.shape[-1] // groups
    patches = None
    y = functools.reduce(jnp.add, [lax.dot_general(col, wm[:, t * cg : (t + 1) * cg], dims, preferred_element_type=acc) for t, col in enumerate(cols)])
  else:
    patches = jnp.concatenate(cols, axis=-1)
    y = lax.dot_general(patches, wm, dims, preferred_element_type=acc)
  y = jnp.moveaxis(y, 0, 1).reshape(x.shape[0], *out_spatial(x.shape, kernel, geometry), w.shape[-1]).astype(x.dtype)
  return y, patches


def input_grad_chunk(dy: jax.Array, w: jax.Array, x_shape: Sequence[int], geometry: Geometry) -> jax.Array:
  """dx of one batch chunk: col2im of ``dy @ W^T``, ``(B, *out, C_out)`` -> ``x_shape`` in dy's dtype."""
  groups = geometry[3]
  dp = lax.dot_general(grouped_columns(dy, groups), kernel_matrix(w, groups), (((2,), (2,)), ((0,), (0,))), preferred_element_type=accumulation_dtype(dy.dtype))
  return scatter_patches(dp, x_shape, w.shape[:-2], geometry).astype(dy.dtype)


def kernel_grad_chunk(x: jax.Array, dy: jax.Array, kernel: Sequence[int], geometry: Geometry) -> jax.Array:
  """One batch chunk's ``patches^T @ dy``: the kernel gradient as a matrix ``(G, K * C_in / G, C_out / G)``."""
  groups = geometry[3]
  acc = accumulation_dtype(x.dtype)
  dyc = grouped_columns(dy, groups)
  rows = tap_rows(x, kernel, geometry)
  dims = (((2,), (1,)), ((0,), (0,)))
  if tap_by_tap(x.shape[-1], groups):
    return jnp.concatenate([lax.dot_general(row, dyc, dims, preferred_element_type=acc) for row in rows], axis=1)
  return lax.dot_general(jnp.concatenate(rows, axis=1), dyc, dims, preferred_element_type=acc)


def chunk_size(x_shape: Sequence[int], w_shape: Sequence[int], dtype, geometry: Geometry) -> int:
  """Images per chunk: the largest batch divisor whose patch matrix fits ``PATCH_BUDGET_BYTES``."""
  kernel = w_shape[:-2]
  per_image = math.prod(out_spatial(x_shape, kernel, geometry)) * math.prod(kernel) * x_shape[-1] * accumulation_dtype(dtype).itemsize
  return batch_chunk(x_shape[0], per_image, PATCH_BUDGET_BYTES)


def forward(x: jax.Array, w: jax.Array, geometry: Geometry) -> tuple[jax.Array, jax.Array | None]:
  """The conv x ``(N, *spatial, C_in)`` -> ``(N, *out, C_out)``, batch chunk by batch chunk, and the
  whole patch matrix when the batch is one chunk and a matrix was built (else None)."""
  chunk = chunk_size(x.shape, w.shape, x.dtype, geometry)
  if chunk == x.shape[0]:
    return forward_chunk(x, w, geometry)
  return map_batch(lambda xc: forward_chunk(xc, w, geometry)[0], chunk, x), None


def input_grad(dy: jax.Array, w: jax.Array, x_shape: Sequence[int], geometry: Geometry) -> jax.Array:
  """dx ``x_shape`` from dy ``(N, *out, C_out)``, batch chunk by batch chunk."""
  chunk = chunk_size(x_shape, w.shape, dy.dtype, geometry)
  return map_batch(lambda dyc: input_grad_chunk(dyc, w, (dyc.shape[0], *x_shape[1:]), geometry), chunk, dy)


def kernel_grad(x: jax.Array, dy: jax.Array, w_shape: Sequence[int], geometry: Geometry) -> jax.Array:
  """dW ``w_shape`` (in x's dtype) as ``sum over batch chunks of patches^T @ dy``."""
  chunk = chunk_size(x.shape, w_shape, x.dtype, geometry)
  dwm = sum_batch(lambda xc, dyc: kernel_grad_chunk(xc, dyc, w_shape[:-2], geometry), chunk, x, dy)
  return kernel_from_matrix(dwm, w_shape).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_im2col_vjp(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The im2col conv with its hand-written backward pass."""
  return forward(x, w, geometry)[0]


Residuals = tuple[jax.Array, jax.Array, jax.Array | None]


def conv_im2col_fwd(x: jax.Array, w: jax.Array, geometry: Geometry) -> tuple[jax.Array, Residuals]:
  """Forward pass, keeping the inputs and, when it fits one chunk, the patch matrix (else recomputed)."""
  y, patches = forward(x, w, geometry)
  return y, (x, w, patches)


def conv_im2col_bwd(geometry: Geometry, residuals: Residuals, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Backward pass: dx by col2im of ``dy @ W^T``, dW as ``patches^T @ dy``, both per batch chunk."""
  x, w, patches = residuals
  dx = input_grad(dy, w, x.shape, geometry)
  if patches is None:
    return dx, kernel_grad(x, dy, w.shape, geometry)
  # Small enough to have been kept: one GEMM contracting its long axis beats gathering it again.
  dwm = lax.dot_general(patches, grouped_columns(dy, geometry[3]), (((1,), (1,)), ((0,), (0,))), preferred_element_type=accumulation_dtype(x.dtype))
  return dx, kernel_from_matrix(dwm, w.shape).astype(w.dtype)


conv_im2col_vjp.defvjp(conv_im2col_fwd, conv_im2col_bwd)


@register("im2col")
def conv_im2col(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """Patch matrix by strided slices, one GEMM per group, batch-chunked, hand-written VJP."""
  return conv_im2col_vjp(x, w, geometry_of(stride, padding, dilation, groups))
