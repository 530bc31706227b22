"""Shift-and-multiply-accumulate kernel for depthwise and narrow grouped convolutions.

Each output is ``sum over taps t and group channels c of x_t[..., g, c] * w[t, c, g, :]``, with
``x_t`` one strided slice of the padded input: ``K * C_in / G`` multiply-adds per output, all in
one fused elementwise loop, where XLA:CPU's grouped convolution is 10-20x slower. The input
gradient is the same sum over the flipped kernel, run on the stride-dilated, padded dy
(autodiff's K scattered pads of per-tap reductions are 50x slower for few input channels). The
kernel gradient, ``K * C_in / G`` reductions over the batch and the spatial axes, is computed
chunk by chunk over the batch so that each chunk's reads stay in cache (3x faster than at once).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.kernels.registry import ConvSpec, accumulation_dtype, register
from jaxconv.kernels.taps import (
    Geometry,
    batch_chunk,
    custom_backward,
    geometry_of,
    image_bytes,
    input_grad_pads,
    out_spatial,
    pad_spatial,
    sum_batch,
    tap_slice,
    taps,
    transposed_kernel,
)

# The widest group (C_in / groups) served: the work per output grows with it, and past a few
# channels a GEMM-based kernel wins.
MAX_GROUP_CHANNELS = 4
# Bytes of x and dy per chunk of the kernel-gradient reductions (about the size of L2 + L3 share).
REDUCE_BUDGET_BYTES = 4 * 2**20


def supports_depthwise(spec: ConvSpec) -> str | None:
  """Accept convs whose groups hold at most ``MAX_GROUP_CHANNELS`` input channels each."""
  width = spec.in_channels // spec.groups
  if width > MAX_GROUP_CHANNELS:
    return f"it serves C_in / groups <= {MAX_GROUP_CHANNELS} (depthwise and narrow groups); this call has {width}"
  return None


def tap_windows(x: jax.Array, kernel, geometry: Geometry, c_out: int) -> list[list[jax.Array]]:
  """Per tap and group channel c, what it reads for every output, spread over its group's outputs.

  x ``(N, *spatial, C_in)`` -> ``[[(N, *out, C_out)] * (C_in / G)] * K``: entry ``[t][c]`` holds
  ``x_t[..., g * C_in/G + c]`` at every output channel of group ``g`` (so no axis of size 1 is minor).
  """
  stride, padding, dilation, groups = geometry
  out = out_spatial(x.shape, kernel, geometry)
  xp = pad_spatial(x, padding)
  c_in = x.shape[-1]
  fan_out = c_out // groups
  windows = []
  for tap in taps(kernel):
    window = tap_slice(xp, tap, stride, dilation, out).reshape(x.shape[0], *out, groups, c_in // groups)
    windows.append([jnp.repeat(window[..., c], fan_out, axis=-1) if fan_out > 1 else window[..., c] for c in range(c_in // groups)])
  return windows


def shift_multiply_add(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """The conv as a sum of ``K * C_in / G`` broadcast products: ``(N, *out, C_out)`` in x's dtype."""
  acc = accumulation_dtype(x.dtype)
  wk = w.reshape(-1, *w.shape[-2:]).astype(acc)  # (K, C_in / G, C_out)
  windows = tap_windows(x, w.shape[:-2], geometry, w.shape[-1])
  terms = (column.astype(acc) * wk[t, c] for t, columns in enumerate(windows) for c, column in enumerate(columns))
  return functools.reduce(jnp.add, terms).astype(x.dtype)


def input_grad(dy: jax.Array, w: jax.Array, x_shape, geometry: Geometry) -> jax.Array:
  """dx ``x_shape`` as the stride-1 correlation of the dilated, padded dy with the flipped kernel."""
  stride, padding, dilation, groups = geometry
  kernel = w.shape[:-2]
  rank = len(kernel)
  config = input_grad_pads(x_shape[1:-1], kernel, stride, padding, dilation, dy.shape[1:-1])
  dyp = lax.pad(dy, jnp.zeros((), dy.dtype), config)
  return shift_multiply_add(dyp, transposed_kernel(w, groups), ((1,) * rank, ((0, 0),) * rank, dilation, groups))


def kernel_grad_chunk(x: jax.Array, dy: jax.Array, w_shape, geometry: Geometry) -> jax.Array:
  """One batch chunk's kernel gradient ``(K, C_in / G, C_out)``, accumulated in float32 or wider."""
  acc = accumulation_dtype(x.dtype)
  dy = dy.astype(acc)
  reduce_axes = tuple(range(dy.ndim - 1))
  windows = tap_windows(x, w_shape[:-2], geometry, w_shape[-1])
  return jnp.stack([jnp.stack([jnp.sum(column.astype(acc) * dy, axis=reduce_axes) for column in columns]) for columns in windows])


def backward(x: jax.Array, w: jax.Array, dy: jax.Array, geometry: Geometry) -> tuple[jax.Array, jax.Array]:
  """dx by the transposed shift-and-multiply-add; dW by reductions over cache-sized batch chunks."""
  dx = input_grad(dy, w, x.shape, geometry)
  chunk = batch_chunk(x.shape[0], image_bytes(x.shape, x.dtype.itemsize) + image_bytes(dy.shape, dy.dtype.itemsize), REDUCE_BUDGET_BYTES)
  dw = sum_batch(lambda xc, dyc: kernel_grad_chunk(xc, dyc, w.shape, geometry), chunk, x, dy)
  return dx, dw.reshape(w.shape).astype(w.dtype)


conv_depthwise_vjp = custom_backward(shift_multiply_add, backward)


@register("depthwise", supports=supports_depthwise)
def conv_depthwise(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """Shift-and-multiply-accumulate over the taps, for depthwise and narrow-group convs."""
  return conv_depthwise_vjp(x, w, geometry_of(stride, padding, dilation, groups))
