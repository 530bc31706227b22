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

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.registry import accumulation_dtype, register
from jaxconv.kernels.taps import (
  batch_chunk,
  dy_padding,
  image_bytes,
  pad_spatial,
  sum_batch,
  tap_slice,
  taps,
  transposed_kernel,
  unit_stride,
)

# The widest group (C_in / groups) served: the work per output grows with it, and past a few
# channels a GEMM-based kernel wins.
MAX_GROUP_CHANNELS = 4
# Bytes of x and dy per chunk of the kernel-gradient reductions (about the size of L2 + L3 share).
REDUCE_BUDGET_BYTES = 4 * 2**20


def supports_depthwise(g: ConvGeometry) -> str | None:
  """Accept convs whose groups hold at most ``MAX_GROUP_CHANNELS`` input channels each."""
  if g.group_in > MAX_GROUP_CHANNELS:
    return f"it serves C_in / groups <= {MAX_GROUP_CHANNELS} (depthwise and narrow groups); this call has {g.group_in}"
  return None


def tap_windows(x: jax.Array, g: ConvGeometry) -> list[list[jax.Array]]:
  """Per tap and group channel c, what it reads for every output, spread over its group's outputs.

  x ``(B, *spatial, C_in)`` -> ``[[(B, *out, C_out)] * (C_in / G)] * K``: entry ``[t][c]`` holds
  ``x_t[..., g * C_in/G + c]`` at every output channel of group ``g`` (so no axis of size 1 is minor).
  """
  out = g.out_spatial
  xp = pad_spatial(x, g.padding)
  cg, fan_out = g.group_in, g.group_out
  windows = []
  for tap in taps(g.kernel):
    window = tap_slice(xp, tap, g.stride, g.dilation, out).reshape(x.shape[0], *out, g.groups, cg)
    windows.append([jnp.repeat(window[..., c], fan_out, axis=-1) if fan_out > 1 else window[..., c] for c in range(cg)])
  return windows


def shift_multiply_add(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """The conv as a sum of ``K * C_in / G`` broadcast products: ``(N, *out, C_out)`` in x's dtype."""
  acc = accumulation_dtype(x.dtype)
  wk = w.reshape(-1, *w.shape[-2:]).astype(acc)  # (K, C_in / G, C_out)
  terms = (
    column.astype(acc) * wk[t, c] for t, columns in enumerate(tap_windows(x, g)) for c, column in enumerate(columns)
  )
  return functools.reduce(jnp.add, terms).astype(x.dtype)


def input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """dx ``(N, *spatial, C_in)`` as the stride-1 correlation of the dilated, padded dy with the flipped kernel."""
  dyp = lax.pad(dy, jnp.zeros((), dy.dtype), dy_padding(g))
  return shift_multiply_add(dyp, transposed_kernel(w, g.groups), unit_stride(g, dyp.shape[1:-1]))


def kernel_grad_chunk(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """One batch chunk's kernel gradient ``(K, C_in / G, C_out)``, accumulated in float32 or wider."""
  acc = accumulation_dtype(x.dtype)
  dy = dy.astype(acc)
  reduce_axes = tuple(range(dy.ndim - 1))
  return jnp.stack(
    [
      jnp.stack([jnp.sum(column.astype(acc) * dy, axis=reduce_axes) for column in columns])
      for columns in tap_windows(x, g)
    ]
  )


def kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """dW ``(*kernel, C_in / G, C_out)`` by reductions over cache-sized batch chunks."""
  chunk = batch_chunk(
    x.shape[0], image_bytes(x.shape, x.dtype.itemsize) + image_bytes(dy.shape, dy.dtype.itemsize), REDUCE_BUDGET_BYTES
  )
  dw = sum_batch(lambda xc, dyc: kernel_grad_chunk(xc, dyc, g), chunk, x, dy)
  return dw.reshape(g.w_shape).astype(x.dtype)


register("depthwise", input_grad=input_grad, kernel_grad=kernel_grad, supports=supports_depthwise)(shift_multiply_add)

__all__ = ["MAX_GROUP_CHANNELS", "input_grad", "kernel_grad", "shift_multiply_add", "supports_depthwise"]
