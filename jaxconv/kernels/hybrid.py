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
import jax.numpy as jnp

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels import im2col
from jaxconv.kernels.lax import conv_lax
from jaxconv.kernels.registry import register


def input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """dx from lax's transposed convolution, or im2col's col2im when strided."""
  if any(s > 1 for s in g.stride):
    # lax's transposed conv runs over a stride-dilated dy, mostly zeros; col2im skips them.
    return im2col.input_grad(dy, w, g)
  _, pullback = jax.vjp(lambda x: conv_lax(x, w, g), jnp.zeros(g.with_batch(dy.shape[0]).x_shape, dy.dtype))
  return pullback(dy)[0]


@register("hybrid", input_grad=input_grad, kernel_grad=im2col.kernel_grad_rows)
def conv_hybrid(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """lax's forward (and stride-1 input gradient); the kernel gradient as im2col's chunked GEMMs."""
  return conv_lax(x, w, g)


__all__ = ["conv_hybrid", "input_grad"]
