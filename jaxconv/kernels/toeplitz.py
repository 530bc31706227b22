"""Banded-matrix (Toeplitz) kernel: the last spatial axis and the channels folded into one GEMM.

Along the last spatial axis a correlation is a product with a banded matrix: output column
``q`` of channel ``o`` is ``sum_{j, c} x[q * s + j * d, c] * w[j, c, o]``, i.e. the padded row
``(W_p * C_in)`` times ``T (W_p * C_in, W_o * C_out)`` with ``T[(q s + j d, c), (q, o)] = w[j, c, o]``.
The other spatial axes are gathered tap by tap as in im2col, but each tap copies whole padded
rows, so the patch matrix is ``(N * prod(out[:-1]), K' * W_p * C_in)`` with ``K' =
prod(kernel[:-1])``: ``K'`` copies of x (5 for a 5x5 kernel) instead of im2col's ``K`` thin
columns, gathered with contiguous copies. One GEMM then writes the output channels-last.

The price is ``W_p / k_w`` times the multiply-adds of a direct convolution (most of them with
the zeros of T). On narrow images with few channels that is cheap next to what it saves: no
gather of single-channel columns, no GEMM with 6 output columns, no scattered col2im. A LeNet
epoch trains 2x faster with it than with im2col (``experiments/bench_training.py``); its
forward + backward on LeNet's conv1 alone is 3x faster (``experiments/compare_kernels.py``).
``supports`` bounds the size of T.

Gradients are JAX's own: the input gradient is ``dY @ T^T`` followed by ``K'`` shifted row pads
(col2im over the leading axes only), the kernel gradient ``X^T @ dY`` read back along T's
bands; forward-mode differentiation works too. T is built with selects, never a matmul, so it
holds w's values exactly on every backend.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.registry import accumulation_dtype, register
from jaxconv.kernels.taps import pad_spatial, tap_slice, taps

# The largest banded matrix T served (bytes): T grows with the square of the image width.
MAX_MATRIX_BYTES = 16 * 2**20


def padded_width(spec: ConvGeometry) -> int:
  """``W_p``: the last spatial axis of x with its padding."""
  return spec.padded[-1]


def matrix_shape(spec: ConvGeometry) -> tuple[int, int]:
  """``(K' * W_p * C_in, W_o * C_out)``: the shape of T for ``spec``."""
  return math.prod(spec.kernel[:-1]) * padded_width(spec) * spec.in_channels, spec.out_spatial[-1] * spec.out_channels


def supports_toeplitz(spec: ConvGeometry) -> str | None:
  """Accept calls whose banded matrix T fits ``MAX_MATRIX_BYTES``."""
  rows, cols = matrix_shape(spec)
  size = rows * cols * spec.dtype.itemsize
  if size > MAX_MATRIX_BYTES:
    return (
      f"its banded matrix would take {size / 2**20:.0f} MiB (> {MAX_MATRIX_BYTES // 2**20} MiB): "
      "the image is too wide or has too many channels"
    )
  return None


def dense_kernel(w: jax.Array, groups: int) -> jax.Array:
  """w ``(*K, C_in / G, C_out)`` -> ``(*K, C_in, C_out)``, zero outside each group's block."""
  if groups == 1:
    return w
  *kernel, cg, c_out = w.shape
  w = w.reshape(*kernel, 1, cg, groups, c_out // groups)
  same_group = np.arange(groups)[:, None, None, None] == np.arange(groups)[None, None, :, None]  # (G, 1, G, 1)
  return jnp.where(same_group, w, jnp.zeros((), w.dtype)).reshape(*kernel, groups * cg, c_out)


def banded_matrix(w: jax.Array, width: int, out_width: int, stride: int, dilation: int) -> jax.Array:
  """w ``(*K, C_in, C_out)`` -> T ``(K' * W_p * C_in, W_o * C_out)``, the last kernel axis spread along bands."""
  *lead, k, c_in, c_out = w.shape
  w = w.reshape(math.prod(lead), k, c_in, c_out)
  rows, cols = np.arange(width)[:, None], np.arange(out_width)[None, :]
  zero = jnp.zeros((), w.dtype)
  # For each (row, column) at most one tap j matches, so the sum adds only zeros to it: exact.
  bands = [
    jnp.where((rows == cols * stride + j * dilation)[None, :, None, :, None], w[:, None, j, :, None, :], zero)
    for j in range(k)
  ]
  t = sum(bands[1:], bands[0])  # (K', W_p, C_in, W_o, C_out)
  return t.reshape(-1, out_width * c_out)


def row_patches(x: jax.Array, g: ConvGeometry) -> jax.Array:
  """x ``(N, *spatial, C)`` -> ``(N * prod(out[:-1]), K' * W_p * C)``: whole padded rows per leading tap."""
  out = g.out_spatial
  xp = pad_spatial(x, g.padding)
  # A whole padded row is tap 0 of the last axis read at stride 1 for W_p outputs.
  row_stride, row_dilation, row_out = (*g.stride[:-1], 1), (*g.dilation[:-1], 1), (*out[:-1], xp.shape[-2])
  rows = [tap_slice(xp, (*tap, 0), row_stride, row_dilation, row_out) for tap in taps(g.kernel[:-1])]
  patches = jnp.stack(rows, axis=x.ndim - 2)  # (N, *out[:-1], K', W_p, C)
  return patches.reshape(math.prod(patches.shape[: x.ndim - 2]), -1)


# Local: no. The GEMM's inner products run over whole padded rows, so an inf or NaN reaches every
# output of its row band (inf * 0 = NaN in T's zeros).
@register("toeplitz", supports=supports_toeplitz, local=False)
def conv_toeplitz(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """Whole padded rows times a banded (Toeplitz) matrix of w: one GEMM, for narrow images and few channels."""
  out = g.out_spatial
  t = banded_matrix(dense_kernel(w, g.groups), g.padded[-1], out[-1], g.stride[-1], g.dilation[-1])
  y = lax.dot(row_patches(x, g), t, preferred_element_type=accumulation_dtype(x.dtype))
  return y.reshape(x.shape[0], *out, g.out_channels).astype(x.dtype)


__all__ = ["MAX_MATRIX_BYTES", "banded_matrix", "conv_toeplitz", "padded_width", "supports_toeplitz"]
