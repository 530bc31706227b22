"""The reference kernel: ``jax.lax.conv_general_dilated``."""

from __future__ import annotations

import jax
from jax import lax

from jaxconv.kernels.registry import accumulation_dtype, register


def dimension_numbers(rank: int) -> lax.ConvDimensionNumbers:
  """Channels-last numbers for ``rank`` spatial axes: x ``(N, *S, C)``, w ``(*K, I, O)``, y ``(N, *S, O)``."""
  spatial = tuple(range(1, rank + 1))
  return lax.ConvDimensionNumbers(
      lhs_spec=(0, rank + 1, *spatial),
      rhs_spec=(rank + 1, rank, *range(rank)),
      out_spec=(0, rank + 1, *spatial),
  )


@register("lax")
def conv_lax(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """XLA's convolution, ``jax.lax.conv_general_dilated``."""
  y = lax.conv_general_dilated(
      x,
      w,
      window_strides=stride,
      padding=padding,
      rhs_dilation=dilation,
      dimension_numbers=dimension_numbers(x.ndim - 2),
      feature_group_count=groups,
      preferred_element_type=accumulation_dtype(x.dtype),
  )
  return y.astype(x.dtype)
