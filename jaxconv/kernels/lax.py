"""The reference kernel: ``jax.lax.conv_general_dilated``."""

from __future__ import annotations

import jax
from jax import lax
from jax.sharding import NamedSharding

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.registry import accumulation_dtype, register


def dimension_numbers(rank: int) -> lax.ConvDimensionNumbers:
  """Channels-last numbers for ``rank`` spatial axes: x ``(N, *S, C)``, w ``(*K, I, O)``, y ``(N, *S, O)``."""
  spatial = tuple(range(1, rank + 1))
  return lax.ConvDimensionNumbers(
    lhs_spec=(0, rank + 1, *spatial),
    rhs_spec=(rank + 1, rank, *range(rank)),
    out_spec=(0, rank + 1, *spatial),
  )


def lax_conv(x: jax.Array, w: jax.Array, g: ConvGeometry, out_sharding: NamedSharding | None = None) -> jax.Array:
  """``jax.lax.conv_general_dilated`` on ``g``; ``out_sharding`` as lax's (the primitives' sharding fallback)."""
  y = lax.conv_general_dilated(
    x,
    w,
    window_strides=g.stride,
    padding=g.padding,
    rhs_dilation=g.dilation,
    dimension_numbers=dimension_numbers(g.rank),
    feature_group_count=g.groups,
    preferred_element_type=accumulation_dtype(x.dtype),
    out_sharding=out_sharding,
  )
  return y.astype(x.dtype)


@register("lax")
def conv_lax(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """XLA's convolution, ``jax.lax.conv_general_dilated``."""
  return lax_conv(x, w, g)


__all__ = ["conv_lax", "dimension_numbers", "lax_conv"]
