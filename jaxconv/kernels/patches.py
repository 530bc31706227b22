"""The hand-written kernel: one output position from a sliced window, ``vmap``-ed everywhere."""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.registry import accumulation_dtype, register
from jaxconv.kernels.taps import pad_spatial


def contract_window(window: jax.Array, w: jax.Array, groups: int) -> jax.Array:
  """``(*K, C_in)`` window . ``(*K, C_in // groups, C_out)`` kernel -> ``(C_out,)``."""
  *kernel, c_in = window.shape
  c_out = w.shape[-1]
  axes = string.ascii_uppercase[: len(kernel)]  # spatial labels must not collide with g, c, o
  window = window.reshape(*kernel, groups, c_in // groups)
  w = w.reshape(*kernel, c_in // groups, groups, c_out // groups)
  y = jnp.einsum(f"{axes}gc,{axes}cgo->go", window, w, preferred_element_type=accumulation_dtype(window.dtype))
  return y.reshape(c_out).astype(window.dtype)


@register("patches")
def conv_patches(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """Slice each output's receptive window with ``lax.dynamic_slice``; ``vmap`` over positions and batch."""
  rank, extent, stride, groups, c_in = g.rank, g.kernel_extent, g.stride, g.groups, g.in_channels
  xp = pad_spatial(x, g.padding)
  taps = tuple(slice(None, None, d) for d in g.dilation)

  def at(image: jax.Array, *index: jax.Array) -> jax.Array:
    """One output position: image ``(*padded, C_in)``, ``rank`` scalar indices -> ``(C_out,)``."""
    start = [i * s for i, s in zip(index, stride)] + [0]
    window = lax.dynamic_slice(image, start, (*extent, c_in))[taps]
    return contract_window(window, w, groups)

  fn = at
  for axis in reversed(range(rank)):  # innermost vmap maps the last spatial axis
    in_axes: list[int | None] = [None] * (rank + 1)
    in_axes[1 + axis] = 0
    fn = jax.vmap(fn, in_axes=tuple(in_axes))
  fn = jax.vmap(fn, in_axes=(0,) + (None,) * rank)  # the batch
  return fn(xp, *(jnp.arange(o) for o in g.out_spatial))


__all__ = ["conv_patches", "contract_window"]
