"""Patch-matrix kernel: strided-slice gather of the taps, one batched GEMM per group, custom VJP.

The forward pass lays the ``K = prod(kernel)`` taps of every output position side by side into
a patch matrix ``(G, M, K * C_in / G)`` (``M = N * prod(out_spatial)``) and contracts it with the
kernel matrix ``(G, K * C_in / G, C_out / G)``. The backward pass does not differentiate through
the gather (whose transpose is ``K`` scattered pads): the kernel gradient is one GEMM
``patches^T @ dy`` and the input gradient one GEMM ``dy @ W^T`` followed by a col2im
(the ``K`` shifted, stride-dilated pads of that product, summed in one fusion).

Memory is bounded: the batch is processed in chunks whose patch matrix fits ``PATCH_BUDGET_BYTES``
(see ``batch_chunk``), so peak memory stays near lax's instead of ``K`` copies of the input.
Large temporaries are also slow here: buffers past glibc's mmap threshold (32 MiB) are
page-faulted afresh on every call.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.kernels.registry import ConvSpec, accumulation_dtype, register
from jaxconv.padding import Pair, output_size

# Upper bound on the bytes of one chunk's patch matrix (and of its gradient in the backward).
PATCH_BUDGET_BYTES = 8 * 2**20

Geometry = tuple[tuple[int, ...], tuple[Pair, ...], tuple[int, ...], int]  # stride, padding, dilation, groups


def taps(kernel: Sequence[int]) -> list[tuple[int, ...]]:
  """Every tap index of a kernel, row-major (the order of ``w.reshape(K, ...)``)."""
  return list(itertools.product(*(range(k) for k in kernel)))


def patch_bytes(spec: ConvSpec) -> int:
  """Bytes of one image's patch matrix ``(prod(out_spatial), K * C_in)`` in the accumulation dtype."""
  return math.prod(spec.out_spatial) * math.prod(spec.kernel) * spec.in_channels * accumulation_dtype(spec.dtype).itemsize


def batch_chunk(batch: int, bytes_per_image: int, budget: int | None = None) -> int:
  """The largest divisor of ``batch`` whose chunk of patch matrices fits ``budget`` (at least 1)."""
  budget = PATCH_BUDGET_BYTES if budget is None else budget
  fitting = max(budget // max(bytes_per_image, 1), 1)
  return max(b for b in range(1, min(batch, fitting) + 1) if batch % b == 0)


def gather_patches(xp: jax.Array, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], out: Sequence[int], groups: int) -> jax.Array:
  """Padded x ``(N, *padded, C)`` -> patch matrix ``(G, N * prod(out), K * C / G)``, tap-major."""
  n, c = xp.shape[0], xp.shape[-1]
  cols = []
  for tap in taps(kernel):
    start = (0, *(t * d for t, d in zip(tap, dilation)), 0)
    limit = (n, *(t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, dilation, out, stride)), c)
    cols.append(lax.slice(xp, start, limit, (1, *stride, 1)).reshape(-1, groups, c // groups))
  patches = jnp.stack(cols, axis=2)  # (M, G, K, C / G)
  return jnp.moveaxis(patches, 1, 0).reshape(groups, patches.shape[0], -1)


def scatter_patches(dp: jax.Array, x_shape: Sequence[int], kernel: Sequence[int], geometry: Geometry) -> jax.Array:
  """col2im, the transpose of ``gather_patches`` on unpadded x: ``(G, M, K * C / G)`` -> ``(N, *spatial, C)``."""
  stride, padding, dilation, groups = geometry
  n, *spatial, c = x_shape
  out = [output_size(m, k, p, s, d) for m, k, p, s, d in zip(spatial, kernel, padding, stride, dilation)]
  dp = dp.reshape(groups, n, *out, len(taps(kernel)), c // groups)
  dp = jnp.moveaxis(dp, 0, -2).reshape(n, *out, -1, c)  # (N, *out, K, C)
  zero = jnp.zeros((), dp.dtype)
  dx = None
  for i, tap in enumerate(taps(kernel)):
    # Tap t of output o reads padded input o*s + t*d, i.e. unpadded input o*s + t*d - lo.
    config = [(0, 0, 0)]
    for t, d, o, s, (lo, _), m in zip(tap, dilation, out, stride, padding, spatial):
      first = t * d - lo
      config.append((first, m - first - (o - 1) * s - 1, s - 1))
    config.append((0, 0, 0))
    term = lax.pad(dp[..., i, :], zero, config)
    dx = term if dx is None else dx + term
  return dx


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


def padded(x: jax.Array, padding: Sequence[Pair]) -> jax.Array:
  """x ``(N, *spatial, C)`` zero-padded on the spatial axes."""
  return jnp.pad(x, ((0, 0), *padding, (0, 0)))


def out_spatial(x_shape: Sequence[int], kernel: Sequence[int], geometry: Geometry) -> list[int]:
  """Output spatial sizes of x ``(N, *spatial, C)`` under ``geometry``."""
  stride, padding, dilation, _ = geometry
  return [output_size(n, k, p, s, d) for n, k, p, s, d in zip(x_shape[1:-1], kernel, padding, stride, dilation)]


def forward_chunk(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The conv of one batch chunk x ``(B, *spatial, C_in)`` -> ``(B, *out, C_out)``, in x's dtype."""
  stride, padding, dilation, groups = geometry
  kernel = w.shape[:-2]
  out = out_spatial(x.shape, kernel, geometry)
  p = gather_patches(padded(x, padding), kernel, stride, dilation, out, groups)
  y = lax.dot_general(p, kernel_matrix(w, groups), (((2,), (1,)), ((0,), (0,))), preferred_element_type=accumulation_dtype(x.dtype))
  return jnp.moveaxis(y, 0, 1).reshape(x.shape[0], *out, w.shape[-1]).astype(x.dtype)


def backward_chunk(x: jax.Array, w: jax.Array, dy: jax.Array, geometry: Geometry) -> tuple[jax.Array, jax.Array]:
  """Gradients of one chunk: ``(dx (B, *spatial, C_in) in x's dtype, dW matrix (G, K * C_in / G, C_out / G))``."""
  stride, padding, dilation, groups = geometry
  kernel = w.shape[:-2]
  out = out_spatial(x.shape, kernel, geometry)
  acc = accumulation_dtype(x.dtype)
  dyc = grouped_columns(dy, groups)  # (G, M, C_out / G)
  p = gather_patches(padded(x, padding), kernel, stride, dilation, out, groups)
  dwm = lax.dot_general(p, dyc, (((1,), (1,)), ((0,), (0,))), preferred_element_type=acc)
  dp = lax.dot_general(dyc, kernel_matrix(w, groups), (((2,), (2,)), ((0,), (0,))), preferred_element_type=acc)
  dx = scatter_patches(dp, x.shape, kernel, geometry)
  return dx.astype(x.dtype), dwm


def chunked(x: jax.Array, w: jax.Array, geometry: Geometry) -> int:
  """The batch chunk size of a call: its patch matrices fit ``PATCH_BUDGET_BYTES``."""
  spec = ConvSpec.of(x, w, stride=geometry[0], padding=geometry[1], dilation=geometry[2], groups=geometry[3])
  return batch_chunk(spec.batch, patch_bytes(spec))


def split_batch(a: jax.Array, chunk: int) -> jax.Array:
  """``(N, ...)`` -> ``(N / chunk, chunk, ...)``."""
  return a.reshape(a.shape[0] // chunk, chunk, *a.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_im2col_vjp(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The im2col conv with its hand-written backward pass."""
  chunk = chunked(x, w, geometry)
  if chunk == x.shape[0]:
    return forward_chunk(x, w, geometry)
  y = lax.map(lambda xc: forward_chunk(xc, w, geometry), split_batch(x, chunk))
  return y.reshape(x.shape[0], *y.shape[2:])


def conv_im2col_fwd(x: jax.Array, w: jax.Array, geometry: Geometry) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Forward pass, keeping only the inputs (patches are recomputed chunk by chunk)."""
  return conv_im2col_vjp(x, w, geometry), (x, w)


def conv_im2col_bwd(geometry: Geometry, residuals: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Backward pass: dx by col2im of ``dy @ W^T``, dW as ``patches^T @ dy``, both per batch chunk."""
  x, w = residuals
  chunk = chunked(x, w, geometry)
  if chunk == x.shape[0]:
    dx, dwm = backward_chunk(x, w, dy, geometry)
  else:

    def step(dwm: jax.Array, chunk_xdy: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
      xc, dyc = chunk_xdy
      dx, dwm_chunk = backward_chunk(xc, w, dyc, geometry)
      return dwm + dwm_chunk, dx

    groups = geometry[3]
    zeros = jnp.zeros(kernel_matrix(w, groups).shape, accumulation_dtype(x.dtype))
    dwm, dx = lax.scan(step, zeros, (split_batch(x, chunk), split_batch(dy, chunk)))
    dx = dx.reshape(x.shape)
  return dx, kernel_from_matrix(dwm, w.shape).astype(w.dtype)


conv_im2col_vjp.defvjp(conv_im2col_fwd, conv_im2col_bwd)


@register("im2col")
def conv_im2col(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """Patch matrix by strided slices, one GEMM per group, batch-chunked, hand-written VJP."""
  geometry = (tuple(stride), tuple(map(tuple, padding)), tuple(dilation), int(groups))
  return conv_im2col_vjp(x, w, geometry)
