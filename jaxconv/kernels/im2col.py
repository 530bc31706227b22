"""Patch-matrix kernel: strided-slice gather of the taps, one batched GEMM per group, custom VJP.

The forward pass lays the ``K = prod(kernel)`` taps of every output position side by side into
a patch matrix ``(G, M, K * C_in / G)`` (``M = N * prod(out_spatial)``) and contracts it with the
kernel matrix ``(G, K * C_in / G, C_out / G)``. The backward pass does not differentiate through
the gather (whose transpose is ``K`` scattered pads): the kernel gradient is one GEMM
``patches^T @ dy`` and the input gradient one GEMM ``dy @ W^T`` followed by col2im (the ``K``
shifted, stride-dilated pads of that product, summed in one fusion).

Memory is bounded: the batch is processed in chunks whose patch matrix fits
``PATCH_BUDGET_BYTES``, so peak memory stays near lax's instead of ``K`` copies of the input.
Large temporaries are slow on CPU as well: buffers past glibc's mmap threshold (32 MiB) are
page-faulted afresh on every call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.kernels.registry import ConvSpec, accumulation_dtype, register
from jaxconv.kernels.taps import batch_chunk, map_batch, pad_spatial, scan_batch, tap_pad_config, tap_slice, taps
from jaxconv.padding import Pair, output_size

# Upper bound on the bytes of one chunk's patch matrix (and of its gradient in the backward).
PATCH_BUDGET_BYTES = 16 * 2**20

Geometry = tuple[tuple[int, ...], tuple[Pair, ...], tuple[int, ...], int]  # stride, padding, dilation, groups


def out_spatial(x_shape: Sequence[int], kernel: Sequence[int], geometry: Geometry) -> list[int]:
  """Output spatial sizes of x ``(N, *spatial, C)`` under ``geometry``."""
  stride, padding, dilation, _ = geometry
  return [output_size(n, k, p, s, d) for n, k, p, s, d in zip(x_shape[1:-1], kernel, padding, stride, dilation)]


def gather_patches(x: jax.Array, kernel: Sequence[int], geometry: Geometry) -> jax.Array:
  """x ``(N, *spatial, C)`` -> patch matrix ``(G, N * prod(out), K * C / G)``, tap-major."""
  stride, padding, dilation, groups = geometry
  out = out_spatial(x.shape, kernel, geometry)
  xp = pad_spatial(x, padding)
  c = x.shape[-1]
  cols = [tap_slice(xp, tap, stride, dilation, out).reshape(-1, groups, c // groups) for tap in taps(kernel)]
  patches = jnp.stack(cols, axis=2)  # (M, G, K, C / G)
  return jnp.moveaxis(patches, 1, 0).reshape(groups, patches.shape[0], -1)


def gather_patches_t(x: jax.Array, kernel: Sequence[int], geometry: Geometry) -> jax.Array:
  """The transposed patch matrix ``(G, K * C / G, N * prod(out))``, gathered from channels-first x.

  ``patches^T @ dy`` runs at GEMM speed with this layout, at half speed or worse when the GEMM
  has to contract the major axis of the ``(M, K * C / G)`` matrix.
  """
  stride, padding, dilation, groups = geometry
  out = out_spatial(x.shape, kernel, geometry)
  xt = jnp.moveaxis(x, -1, 0)  # (C, N, *spatial)
  xt = jnp.pad(xt, ((0, 0), (0, 0), *padding))
  c = x.shape[-1]
  rows = []
  for tap in taps(kernel):
    start = (0, 0, *(t * d for t, d in zip(tap, dilation)))
    limit = (c, x.shape[0], *(t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, dilation, out, stride)))
    rows.append(lax.slice(xt, start, limit, (1, 1, *stride)).reshape(groups, c // groups, -1))
  patches = jnp.stack(rows, axis=1)  # (G, K, C / G, M)
  return patches.reshape(groups, -1, patches.shape[-1])


def scatter_patches(dp: jax.Array, x_shape: Sequence[int], kernel: Sequence[int], geometry: Geometry) -> jax.Array:
  """col2im, the transpose of ``gather_patches``: ``(G, M, K * C / G)`` -> ``(N, *spatial, C)``."""
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


def forward_chunk(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The conv of one batch chunk x ``(B, *spatial, C_in)`` -> ``(B, *out, C_out)``, in x's dtype."""
  groups = geometry[3]
  kernel = w.shape[:-2]
  p = gather_patches(x, kernel, geometry)
  y = lax.dot_general(p, kernel_matrix(w, groups), (((2,), (1,)), ((0,), (0,))), preferred_element_type=accumulation_dtype(x.dtype))
  return jnp.moveaxis(y, 0, 1).reshape(x.shape[0], *out_spatial(x.shape, kernel, geometry), w.shape[-1]).astype(x.dtype)


def input_grad_chunk(dy: jax.Array, w: jax.Array, x_shape: Sequence[int], geometry: Geometry) -> jax.Array:
  """dx of one batch chunk: col2im of ``dy @ W^T``, ``(B, *out, C_out)`` -> ``x_shape`` in dy's dtype."""
  groups = geometry[3]
  dp = lax.dot_general(grouped_columns(dy, groups), kernel_matrix(w, groups), (((2,), (2,)), ((0,), (0,))), preferred_element_type=accumulation_dtype(dy.dtype))
  return scatter_patches(dp, x_shape, w.shape[:-2], geometry).astype(dy.dtype)


def kernel_grad_chunk(x: jax.Array, dy: jax.Array, kernel: Sequence[int], geometry: Geometry) -> jax.Array:
  """One batch chunk's ``patches^T @ dy``: the kernel gradient as a matrix ``(G, K * C_in / G, C_out / G)``."""
  groups = geometry[3]
  pt = gather_patches_t(x, kernel, geometry)
  return lax.dot_general(pt, grouped_columns(dy, groups), (((2,), (1,)), ((0,), (0,))), preferred_element_type=accumulation_dtype(x.dtype))


def chunk_size(x_shape: Sequence[int], w_shape: Sequence[int], dtype, geometry: Geometry) -> int:
  """Images per chunk: the largest batch divisor whose patch matrix fits ``PATCH_BUDGET_BYTES``."""
  kernel = w_shape[:-2]
  per_image = math.prod(out_spatial(x_shape, kernel, geometry)) * math.prod(kernel) * x_shape[-1] * accumulation_dtype(dtype).itemsize
  return batch_chunk(x_shape[0], per_image, PATCH_BUDGET_BYTES)


def forward(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The conv x ``(N, *spatial, C_in)`` -> ``(N, *out, C_out)``, batch chunk by batch chunk."""
  return map_batch(lambda xc: forward_chunk(xc, w, geometry), chunk_size(x.shape, w.shape, x.dtype, geometry), x)


def input_grad(dy: jax.Array, w: jax.Array, x_shape: Sequence[int], geometry: Geometry) -> jax.Array:
  """dx ``x_shape`` from dy ``(N, *out, C_out)``, batch chunk by batch chunk."""
  chunk = chunk_size(x_shape, w.shape, dy.dtype, geometry)
  return map_batch(lambda dyc: input_grad_chunk(dyc, w, (dyc.shape[0], *x_shape[1:]), geometry), chunk, dy)


def kernel_grad(x: jax.Array, dy: jax.Array, w_shape: Sequence[int], geometry: Geometry) -> jax.Array:
  """dW ``w_shape`` (in x's dtype) as ``sum over batch chunks of patches^T @ dy``."""
  chunk = chunk_size(x.shape, w_shape, x.dtype, geometry)
  _, dwm = scan_batch(lambda xc, dyc: (None, kernel_grad_chunk(xc, dyc, w_shape[:-2], geometry)), chunk, x, dy)
  return kernel_from_matrix(dwm, w_shape).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_im2col_vjp(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The im2col conv with its hand-written backward pass."""
  return forward(x, w, geometry)


def conv_im2col_fwd(x: jax.Array, w: jax.Array, geometry: Geometry) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Forward pass, keeping only the inputs (patches are recomputed chunk by chunk)."""
  return forward(x, w, geometry), (x, w)


def conv_im2col_bwd(geometry: Geometry, residuals: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Backward pass: dx by col2im of ``dy @ W^T``, dW as ``patches^T @ dy``, both per batch chunk."""
  x, w = residuals
  return input_grad(dy, w, x.shape, geometry), kernel_grad(x, dy, w.shape, geometry)


conv_im2col_vjp.defvjp(conv_im2col_fwd, conv_im2col_bwd)


def geometry_of(stride, padding, dilation, groups) -> Geometry:
  """The kernel-contract geometry as one hashable tuple."""
  return (tuple(stride), tuple(map(tuple, padding)), tuple(dilation), int(groups))


@register("im2col")
def conv_im2col(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """Patch matrix by strided slices, one GEMM per group, batch-chunked, hand-written VJP."""
  return conv_im2col_vjp(x, w, geometry_of(stride, padding, dilation, groups))
