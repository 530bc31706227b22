"""Shared pieces of the custom kernels: taps and strided tap slices, the input-gradient
correlation, and batch chunking.

A kernel tap ``t`` (one index per spatial axis) of output position ``o`` reads the padded input
at ``o * stride + t * dilation``; for all outputs at once that is one strided slice.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.geometry import ConvGeometry, Pair


def taps(kernel: Sequence[int]) -> list[tuple[int, ...]]:
  """Every tap index of a kernel, row-major (the order of ``w.reshape(prod(kernel), ...)``)."""
  return list(itertools.product(*(range(k) for k in kernel)))


def pad_spatial(x: jax.Array, padding: Sequence[Pair]) -> jax.Array:
  """x ``(N, *spatial, C)`` zero-padded by ``(lo, hi)`` on each spatial axis."""
  return jnp.pad(x, ((0, 0), *padding, (0, 0)))


def tap_slice(
  xp: jax.Array, tap: Sequence[int], stride: Sequence[int], dilation: Sequence[int], out: Sequence[int]
) -> jax.Array:
  """What tap ``tap`` reads for every output: padded x ``(N, *padded, C)`` -> ``(N, *out, C)``."""
  start = (0, *(t * d for t, d in zip(tap, dilation)), 0)
  limit = (xp.shape[0], *(t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, dilation, out, stride)), xp.shape[-1])
  return lax.slice(xp, start, limit, (1, *stride, 1))


def tap_pad_config(
  tap: Sequence[int],
  spatial: Sequence[int],
  stride: Sequence[int],
  padding: Sequence[Pair],
  dilation: Sequence[int],
  out: Sequence[int],
) -> list[tuple[int, int, int]]:
  """``lax.pad`` config that places a tap's ``(N, *out, C)`` values where they were read in unpadded x.

  The transpose of ``tap_slice`` composed with the padding: summed over all taps it is col2im.
  """
  config = [(0, 0, 0)]
  for t, d, o, s, (lo, _), n in zip(tap, dilation, out, stride, padding, spatial):
    first = t * d - lo  # may be negative (the tap reads padding): lax.pad crops then
    config.append((first, n - first - (o - 1) * s - 1, s - 1))
  return config + [(0, 0, 0)]


def swap_channels(w: jax.Array, groups: int) -> jax.Array:
  """w ``(*K, C_in/G, C_out)`` -> ``(*K, C_out/G, C_in)``: the kernel of the conv mapping C_out back to C_in.

  Each group's in/out axes are swapped while the groups keep their order.
  """
  rank = w.ndim - 2
  *kernel, cg, c_out = w.shape
  w = w.reshape(*kernel, cg, groups, c_out // groups)
  w = jnp.transpose(w, (*range(rank), rank + 2, rank + 1, rank))  # (*K, C_out/G, G, C_in/G)
  return w.reshape(*kernel, c_out // groups, groups * cg)


def transposed_kernel(w: jax.Array, groups: int) -> jax.Array:
  """The input gradient's kernel: w ``(*K, C_in/G, C_out)`` flipped, channels swapped -> ``(*K, C_out/G, C_in)``."""
  return swap_channels(jnp.flip(w, axis=tuple(range(w.ndim - 2))), groups)


def input_grad_pads(
  spatial: Sequence[int],
  kernel: Sequence[int],
  stride: Sequence[int],
  padding: Sequence[Pair],
  dilation: Sequence[int],
  out: Sequence[int],
) -> list[tuple[int, int, int]]:
  """``lax.pad`` config for dy ``(N, *out, C_out)`` so that dx is its stride-1 correlation with ``transposed_kernel``.

  dy is dilated by the stride and padded so that output ``i`` of the correlation lines up with
  input ``i``: ``lo' = d (k - 1) - lo``, ``hi' = n + lo - 1 - (out - 1) s`` (negative values crop).
  """
  config = [(0, 0, 0)]
  for n, k, s, (lo, _), d, o in zip(spatial, kernel, stride, padding, dilation, out):
    config.append((d * (k - 1) - lo, n + lo - 1 - (o - 1) * s, s - 1))
  return config + [(0, 0, 0)]


def batch_chunk(batch: int, bytes_per_image: int, budget: int) -> int:
  """The largest divisor of ``batch`` whose chunk takes at most ``budget`` bytes (at least 1)."""
  fitting = max(budget // max(bytes_per_image, 1), 1)
  return max(b for b in range(1, min(batch, fitting) + 1) if batch % b == 0)


def split_batch(a: jax.Array, chunk: int) -> jax.Array:
  """``(N, ...)`` -> ``(N / chunk, chunk, ...)``."""
  return a.reshape(a.shape[0] // chunk, chunk, *a.shape[1:])


def map_batch(fn: Callable[..., jax.Array], chunk: int, *arrays: jax.Array) -> jax.Array:
  """``fn`` applied to batch chunks of ``arrays`` one after another, results concatenated."""
  if chunk == arrays[0].shape[0]:
    return fn(*arrays)
  y = lax.map(lambda parts: fn(*parts), tuple(split_batch(a, chunk) for a in arrays))
  return y.reshape(-1, *y.shape[2:])


def sum_batch(fn: Callable[..., jax.Array], chunk: int, *arrays: jax.Array) -> jax.Array:
  """``sum over batch chunks of fn(*chunks of arrays)``, one chunk after another."""
  if chunk == arrays[0].shape[0]:
    return fn(*arrays)
  parts = tuple(split_batch(a, chunk) for a in arrays)
  summand = jax.eval_shape(fn, *(p[0] for p in parts))

  def step(total: jax.Array, chunk_arrays: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
    return total + fn(*chunk_arrays), None

  total, _ = lax.scan(step, jnp.zeros(summand.shape, summand.dtype), parts)
  return total


def image_bytes(shape: Sequence[int], itemsize: int) -> int:
  """Bytes of one batch element of an array of ``shape`` ``(N, ...)``."""
  return math.prod(shape[1:]) * itemsize


def unit_stride(g: ConvGeometry, spatial: Sequence[int]) -> ConvGeometry:
  """``g``'s kernel, dilation and groups as a stride-1, unpadded correlation over ``spatial``.

  The input gradient of ``g`` is that correlation of the padded, stride-dilated dy (``input_grad_pads``)
  with ``transposed_kernel(w)``: C_out channels in, C_in out.
  """
  rank = g.rank
  return dataclasses.replace(
    g,
    spatial=tuple(spatial),
    stride=(1,) * rank,
    padding=((0, 0),) * rank,
    in_channels=g.out_channels,
    out_channels=g.in_channels,
  )


def dy_padding(g: ConvGeometry) -> list[tuple[int, int, int]]:
  """``lax.pad`` config of dy for ``unit_stride``'s correlation: ``input_grad_pads`` of ``g``."""
  return input_grad_pads(g.spatial, g.kernel, g.stride, g.padding, g.dilation, g.out_spatial)
