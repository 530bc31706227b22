"""FFT kernel: correlation as a product in the frequency domain, for large kernels.

The padded input and the dilated kernel are zero-padded to a common fast FFT length ``L >=
n + lo + hi`` per axis; ``irfftn(rfftn(x) * conj(rfftn(w)))`` is then the circular correlation,
equal to the linear one at every valid output (no tap wraps around). Channels mix per frequency
(``(N, C_in) @ (C_in, C_out)`` per group), and a stride keeps every ``s``-th stride-1 output.
The cost is ``O(N C L log L + N C_in C_out L)`` whatever the kernel size, so it wins for large
kernels. Gradients come from autodiff (the FFTs and the product are linear).

Error: rounding grows like ``eps * log L`` relative to ``|x| |w|`` rather than to ``|y|``; against
lax in float32 the max error is a few ``1e-6`` of ``max |y|`` on typical shapes (``tests/test_kernels.py``
bounds it by ``FFT_RTOL``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.registry import accumulation_dtype, register
from jaxconv.kernels.taps import pad_spatial

# Tolerance, relative to max |y|, that the float32 FFT kernel is tested to against lax.
FFT_RTOL = 1e-4


def is_smooth(n: int) -> bool:
  """True when ``n`` has no prime factor other than 2, 3 and 5."""
  for p in (2, 3, 5):
    while n % p == 0:
      n //= p
  return n == 1


def fast_length(n: int) -> int:
  """The smallest ``2^a 3^b 5^c >= n``: the lengths the FFT library handles fastest."""
  while not is_smooth(n):
    n += 1
  return n


def dilated(w: jax.Array, dilation) -> jax.Array:
  """w ``(*kernel, I, O)`` with ``d - 1`` zeros between taps on each spatial axis."""
  rank = w.ndim - 2
  zero = jnp.zeros((), w.dtype)
  return lax.pad(w, zero, [*((0, 0, d - 1) for d in dilation), (0, 0, 0), (0, 0, 0)][: rank + 2])


def complex_dtype(dtype) -> jnp.dtype:
  """The complex dtype that transforms of ``dtype`` arrays are computed in."""
  return jnp.complex128 if accumulation_dtype(dtype) == jnp.float64 else jnp.complex64


# Local: no. Every output is a sum over all frequencies, so one inf or NaN input spreads to the whole output.
@register("fft", local=False)
def conv_fft(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """Frequency-domain product per channel pair (``rfftn``), stride by subsampling; for large kernels."""
  rank, n, groups, stride, padding, dilation = g.rank, x.shape[0], g.groups, g.stride, g.padding, g.dilation
  cg, c_out = g.group_in, g.out_channels
  acc = accumulation_dtype(x.dtype)
  lengths = [fast_length(m) for m in g.padded]
  axes = tuple(range(1, rank + 1))
  xf = jnp.fft.rfftn(pad_spatial(x.astype(acc), padding), s=lengths, axes=axes)  # (N, *F, C_in)
  wf = jnp.fft.rfftn(dilated(w.astype(acc), dilation), s=lengths, axes=tuple(range(rank)))  # (*F, C_in / G, C_out)
  freq = xf.shape[1:-1]
  xf = xf.reshape(n, *freq, groups, cg)
  wf = jnp.conj(wf).reshape(*freq, cg, groups, c_out // groups)
  letters = "xyz"[:rank]
  yf = jnp.einsum(f"n{letters}gc,{letters}cgo->n{letters}go", xf, wf).reshape(n, *freq, c_out)
  y = jnp.fft.irfftn(yf, s=lengths, axes=axes)
  keep = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(g.out_spatial, stride))
  return y[(slice(None), *keep, slice(None))].astype(x.dtype)


__all__ = ["FFT_RTOL", "conv_fft", "fast_length"]
