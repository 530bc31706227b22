"""Shift-and-multiply-accumulate kernel for depthwise and narrow grouped convolutions.

Each output is ``sum over taps t and group channels c of x_t[..., g, c] * w[t, c, g, :]``, with
``x_t`` one strided slice of the padded input: ``K * C_in / G`` multiply-adds per output, all in
one fused elementwise loop, where XLA:CPU's grouped convolution is 10-20x slower. The forward
pass and the input gradient (autodiff turns the slices into pads, fused the same way) stay
elementwise; the kernel gradient, ``K * C_in / G`` reductions over the batch and the spatial axes,
is computed chunk by chunk over the batch so each chunk's reads stay in cache.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxconv.kernels.registry import ConvSpec, accumulation_dtype, register
from jaxconv.kernels.taps import batch_chunk, image_bytes, pad_spatial, scan_batch, tap_slice, taps
from jaxconv.padding import Pair, output_size

# The widest group (C_in / groups) served: the work per output grows with it, and past a few
# channels a GEMM-based kernel wins.
MAX_GROUP_CHANNELS = 4
# Bytes of x and dy per chunk of the kernel-gradient reductions (about the size of L2 + L3 share).
REDUCE_BUDGET_BYTES = 4 * 2**20

Geometry = tuple[tuple[int, ...], tuple[Pair, ...], tuple[int, ...], int]  # stride, padding, dilation, groups


def supports_depthwise(spec: ConvSpec) -> str | None:
  """Accept convs whose groups hold at most ``MAX_GROUP_CHANNELS`` input channels each."""
  width = spec.in_channels // spec.groups
  if width > MAX_GROUP_CHANNELS:
    return f"it serves C_in / groups <= {MAX_GROUP_CHANNELS} (depthwise and narrow groups); this call has {width}"
  return None


def out_spatial(x_shape, kernel, geometry: Geometry) -> list[int]:
  """Output spatial sizes of x ``(N, *spatial, C)`` under ``geometry``."""
  stride, padding, dilation, _ = geometry
  return [output_size(n, k, p, s, d) for n, k, p, s, d in zip(x_shape[1:-1], kernel, padding, stride, dilation)]


def tap_windows(x: jax.Array, kernel, geometry: Geometry) -> list[jax.Array]:
  """Per tap, what it reads for every output, grouped: ``(N, *out, G, C_in / G)``."""
  stride, padding, dilation, groups = geometry
  out = out_spatial(x.shape, kernel, geometry)
  xp = pad_spatial(x, padding)
  c = x.shape[-1]
  return [tap_slice(xp, tap, stride, dilation, out).reshape(*xp.shape[:1], *out, groups, c // groups) for tap in taps(kernel)]


def grouped_kernel(w: jax.Array, groups: int) -> jax.Array:
  """w ``(*kernel, C_in / G, C_out)`` -> ``(K, C_in / G, G, C_out / G)``."""
  *kernel, cg, c_out = w.shape
  return w.reshape(math.prod(kernel), cg, groups, c_out // groups)


def shift_multiply_add(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The conv as a sum of ``K * C_in / G`` broadcast products: ``(N, *out, C_out)`` in x's dtype."""
  groups = geometry[3]
  kernel = w.shape[:-2]
  acc = accumulation_dtype(x.dtype)
  wg = grouped_kernel(w, groups).astype(acc)
  terms = (window[..., c, None].astype(acc) * wg[t, c] for t, window in enumerate(tap_windows(x, kernel, geometry)) for c in range(wg.shape[1]))
  y = functools.reduce(jnp.add, terms)  # (N, *out, G, C_out / G)
  return y.reshape(*y.shape[:-2], w.shape[-1]).astype(x.dtype)


def kernel_grad_chunk(x: jax.Array, dy: jax.Array, w_shape, geometry: Geometry) -> jax.Array:
  """One batch chunk's kernel gradient ``(K, C_in / G, G, C_out / G)``, accumulated in float32 or wider."""
  groups = geometry[3]
  kernel = w_shape[:-2]
  acc = accumulation_dtype(x.dtype)
  dyg = dy.reshape(*dy.shape[:-1], groups, -1).astype(acc)  # (B, *out, G, C_out / G)
  reduce_axes = tuple(range(dy.ndim - 1))
  rows = [
      jnp.stack([jnp.sum(window[..., c, None].astype(acc) * dyg, axis=reduce_axes) for c in range(w_shape[-2])])
      for window in tap_windows(x, kernel, geometry)
  ]
  return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_depthwise_vjp(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The shift-and-multiply-add conv with a chunked kernel gradient."""
  return shift_multiply_add(x, w, geometry)


def conv_depthwise_fwd(x: jax.Array, w: jax.Array, geometry: Geometry) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Forward pass, keeping the inputs."""
  return shift_multiply_add(x, w, geometry), (x, w)


def conv_depthwise_bwd(geometry: Geometry, residuals: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """dx by autodiff of the elementwise forward (fused pads); dW by chunked reductions."""
  x, w = residuals
  _, pullback = jax.vjp(lambda x: shift_multiply_add(x, w, geometry), x)
  (dx,) = pullback(dy)
  chunk = batch_chunk(x.shape[0], image_bytes(x.shape, x.dtype.itemsize) + image_bytes(dy.shape, dy.dtype.itemsize), REDUCE_BUDGET_BYTES)
  _, dw = scan_batch(lambda xc, dyc: (None, kernel_grad_chunk(xc, dyc, w.shape, geometry)), chunk, x, dy)
  return dx, dw.reshape(w.shape).astype(w.dtype)


conv_depthwise_vjp.defvjp(conv_depthwise_fwd, conv_depthwise_bwd)


@register("depthwise", supports=supports_depthwise)
def conv_depthwise(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """Shift-and-multiply-accumulate over the taps, for depthwise and narrow-group convs."""
  return conv_depthwise_vjp(x, w, (tuple(stride), tuple(map(tuple, padding)), tuple(dilation), int(groups)))
