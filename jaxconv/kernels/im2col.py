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
patch matrix that fits in one chunk is contracted again for the kernel gradient (the same gather
as the forward's, which XLA computes once) instead of gathered transposed.
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

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.registry import accumulation_dtype, register
from jaxconv.kernels.taps import batch_chunk, map_batch, pad_spatial, sum_batch, tap_pad_config, tap_slice, taps

# Upper bound on the bytes of one chunk's patch matrix (and of its gradient in the backward).
PATCH_BUDGET_BYTES = 16 * 2**20
# Channels per group from which each tap gets its own GEMM instead of one patch-matrix GEMM.
TAP_GEMM_MIN_DEPTH = 32


def tap_columns(x: jax.Array, g: ConvGeometry) -> list[jax.Array]:
  """Per tap, what it reads for every output, as a GEMM operand ``(G, B * prod(out), C / G)`` (x ``(B, ...)``)."""
  xp = pad_spatial(x, g.padding)
  c = x.shape[-1]
  return [
    jnp.moveaxis(tap_slice(xp, tap, g.stride, g.dilation, g.out_spatial).reshape(-1, g.groups, c // g.groups), 1, 0)
    for tap in taps(g.kernel)
  ]


def tap_rows(x: jax.Array, g: ConvGeometry) -> list[jax.Array]:
  """Per tap, the transposed operand ``(G, C / G, B * prod(out))``, sliced from channels-first x.

  ``patches^T @ dy`` runs at GEMM speed with this layout, at half speed or worse when the GEMM
  has to contract the major axis of a ``(M, C / G)`` operand.
  """
  xt = jnp.pad(jnp.moveaxis(x, -1, 0), ((0, 0), (0, 0), *g.padding))  # (C, B, *padded)
  c = x.shape[-1]
  rows = []
  for tap in taps(g.kernel):
    start = (0, 0, *(t * d for t, d in zip(tap, g.dilation)))
    limit = (c, x.shape[0], *(t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, g.dilation, g.out_spatial, g.stride)))
    rows.append(lax.slice(xt, start, limit, (1, 1, *g.stride)).reshape(g.groups, c // g.groups, -1))
  return rows


def tap_by_tap(g: ConvGeometry) -> bool:
  """Whether to run one GEMM per tap (deep enough per-tap contraction) instead of one patch-matrix GEMM.

  Per-tap GEMMs skip writing and re-reading the ``K``-times larger patch matrix; below
  ``TAP_GEMM_MIN_DEPTH`` channels per group their contraction is too short to run at GEMM speed.
  """
  return g.group_in >= TAP_GEMM_MIN_DEPTH


def scatter_patches(dp: jax.Array, batch: int, g: ConvGeometry) -> jax.Array:
  """col2im, the transpose of the tap gather: ``(G, M, K * C / G)`` -> ``(B, *spatial, C)``."""
  c = g.in_channels
  dp = dp.reshape(g.groups, batch, *g.out_spatial, g.taps, c // g.groups)
  dp = jnp.moveaxis(dp, 0, -2).reshape(batch, *g.out_spatial, -1, c)  # (B, *out, K, C)
  zero = jnp.zeros((), dp.dtype)
  configs = (tap_pad_config(tap, g.spatial, g.stride, g.padding, g.dilation, g.out_spatial) for tap in taps(g.kernel))
  return functools.reduce(jnp.add, [lax.pad(dp[..., i, :], zero, config) for i, config in enumerate(configs)])


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


def forward_chunk(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """The conv of one batch chunk x ``(B, *spatial, C_in)`` -> ``(B, *out, C_out)`` in x's dtype."""
  acc = accumulation_dtype(x.dtype)
  wm = kernel_matrix(w, g.groups)  # (G, K * C_in / G, C_out / G)
  cols = tap_columns(x, g)
  dims = (((2,), (1,)), ((0,), (0,)))
  if tap_by_tap(g):
    cg = g.group_in
    y = functools.reduce(
      jnp.add,
      [
        lax.dot_general(col, wm[:, t * cg : (t + 1) * cg], dims, preferred_element_type=acc)
        for t, col in enumerate(cols)
      ],
    )
  else:
    y = lax.dot_general(jnp.concatenate(cols, axis=-1), wm, dims, preferred_element_type=acc)
  return jnp.moveaxis(y, 0, 1).reshape(x.shape[0], *g.out_spatial, g.out_channels).astype(x.dtype)


def input_grad_chunk(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """dx of one batch chunk: col2im of ``dy @ W^T``, ``(B, *out, C_out)`` -> ``(B, *spatial, C_in)`` in dy's dtype."""
  dims = (((2,), (2,)), ((0,), (0,)))
  dp = lax.dot_general(
    grouped_columns(dy, g.groups), kernel_matrix(w, g.groups), dims, preferred_element_type=accumulation_dtype(dy.dtype)
  )
  return scatter_patches(dp, dy.shape[0], g).astype(dy.dtype)


def kernel_grad_chunk(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """One batch chunk's ``patches^T @ dy``: the kernel gradient as a matrix ``(G, K * C_in / G, C_out / G)``."""
  acc = accumulation_dtype(x.dtype)
  dyc = grouped_columns(dy, g.groups)
  rows = tap_rows(x, g)
  dims = (((2,), (1,)), ((0,), (0,)))
  if tap_by_tap(g):
    return jnp.concatenate([lax.dot_general(row, dyc, dims, preferred_element_type=acc) for row in rows], axis=1)
  return lax.dot_general(jnp.concatenate(rows, axis=1), dyc, dims, preferred_element_type=acc)


def chunk_size(g: ConvGeometry) -> int:
  """Images per chunk: the largest batch divisor whose patch matrix fits ``PATCH_BUDGET_BYTES``."""
  per_image = math.prod(g.out_spatial) * g.taps * g.in_channels * accumulation_dtype(g.dtype).itemsize
  return batch_chunk(g.batch, per_image, PATCH_BUDGET_BYTES)


def forward(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """Patch matrix by strided slices, one GEMM per group, batch-chunked; hand-written transposes."""
  return map_batch(lambda xc: forward_chunk(xc, w, g), chunk_size(g), x)


def input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """dx ``(N, *spatial, C_in)`` from dy ``(N, *out, C_out)``: col2im of ``dy @ W^T``, batch chunk by batch chunk."""
  return map_batch(lambda dyc: input_grad_chunk(dyc, w, g), chunk_size(g), dy)


def kernel_grad_rows(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """dW ``(*kernel, C_in / G, C_out)`` (x's dtype) as the sum over batch chunks of ``patches^T @ dy``."""
  dwm = sum_batch(lambda xc, dyc: kernel_grad_chunk(xc, dyc, g), chunk_size(g), x, dy)
  return kernel_from_matrix(dwm, g.w_shape).astype(x.dtype)


def kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """dW: when the batch is one chunk and the forward built a patch matrix, one GEMM over that same
  matrix (XLA computes the identical gather once for both); else ``kernel_grad_rows``."""
  if chunk_size(g) != g.batch or tap_by_tap(g):
    return kernel_grad_rows(x, dy, g)
  patches = jnp.concatenate(tap_columns(x, g), axis=-1)
  dims = (((1,), (1,)), ((0,), (0,)))
  dwm = lax.dot_general(
    patches, grouped_columns(dy, g.groups), dims, preferred_element_type=accumulation_dtype(x.dtype)
  )
  return kernel_from_matrix(dwm, g.w_shape).astype(x.dtype)


register("im2col", input_grad=input_grad, kernel_grad=kernel_grad)(forward)

__all__ = [
  "PATCH_BUDGET_BYTES",
  "TAP_GEMM_MIN_DEPTH",
  "chunk_size",
  "forward",
  "input_grad",
  "kernel_grad",
  "kernel_grad_rows",
]
