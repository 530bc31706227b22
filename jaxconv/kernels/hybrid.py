"""XLA's convolution for the forward pass (and the stride-1 input gradient), GEMMs for the rest.

On CPU, XLA's forward convolution and its input-gradient convolution (a transposed conv) are
fast, but on inputs of tens of MiB its kernel-gradient convolution (the batch contracted, the
output a huge window) runs 1.5-2x slower than the same work as GEMMs (on small inputs it is
fine). This kernel keeps the first two and computes the kernel gradient as ``patches^T @ dy``
with im2col's batch-chunked gather; for a strided conv it takes im2col's input gradient too
(col2im of ``dy @ W^T``), since XLA's runs over the stride-dilated, mostly zero dy.
"""

from __future__ import annotations

import jax

from jaxconv.kernels import im2col
from jaxconv.kernels.lax import conv_lax
from jaxconv.kernels.registry import register
from jaxconv.kernels.taps import Geometry, custom_backward, geometry_of


def lax_conv(x: jax.Array, w: jax.Array, geometry: Geometry) -> jax.Array:
  """``conv_lax`` on a geometry tuple."""
  stride, padding, dilation, groups = geometry
  return conv_lax(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)


def backward(x: jax.Array, w: jax.Array, dy: jax.Array, geometry: Geometry) -> tuple[jax.Array, jax.Array]:
  """dx from lax's transposed convolution (im2col's col2im when strided), dW from im2col's ``patches^T @ dy``."""
  if any(s > 1 for s in geometry[0]):
    # lax's transposed conv runs over a stride-dilated dy, mostly zeros; col2im skips them.
    dx = im2col.input_grad(dy, w, x.shape, geometry)
  else:
    _, pullback = jax.vjp(lambda x: lax_conv(x, w, geometry), x)
    (dx,) = pullback(dy)
  return dx, im2col.kernel_grad(x, dy, w.shape, geometry)


conv_hybrid_vjp = custom_backward(lax_conv, backward)


@register("hybrid")
def conv_hybrid(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """lax's forward (and stride-1 input gradient); the kernel gradient as im2col's chunked GEMMs."""
  return conv_hybrid_vjp(x, w, geometry_of(stride, padding, dilation, groups))
