"""The default kernel: picks an implementation per call from static shapes only.

The rule is what ``experiments/compare_kernels.py`` measured on XLA:CPU (2 cores, forward +
backward, see ``docs/bench/kernels.md``); on other backends lax is usually the right answer, so
there ``"auto"`` is lax. ``K`` is the number of kernel taps, ``Cg = C_in / groups``,
``Og = C_out / groups``. First match wins:

1. groups > 1 and Cg <= 4                   -> "depthwise"  (XLA's grouped conv is 10-20x slow)
2. stride 1, K >= 25 and Cg * Og <= 64      -> "fft"        (large kernels, few channels)
3. one spatial axis                         -> "lax"        (XLA is fast on 1-D)
4. three spatial axes: 3 taps, stride 1 and dilation 1 on each -> "winograd", else "im2col"
5. K == 1 or groups > 1                     -> "im2col"     (pure GEMMs; lax's backward is slow)
6. a stride > 1: Cg >= 32 -> "im2col", else "lax"          (lax is good on narrow strided stems)
7. otherwise (2-D, stride 1): Cg >= 32 -> "hybrid", else "im2col"

``"hybrid"`` keeps XLA's fast forward and input-gradient convolutions and replaces only its slow
kernel gradient. The choice never depends on values or timing, so it is the same under jit,
grad and vmap, and every chosen kernel supports the call.
"""

from __future__ import annotations

import math

import jax

from jaxconv.kernels.registry import ConvSpec, get, register
from jaxconv.kernels.winograd import supports_winograd

# Rule thresholds (see the module docstring).
FFT_MIN_TAPS = 25
FFT_MAX_CHANNEL_PRODUCT = 64
WIDE_CHANNELS = 32
NARROW_GROUP = 4


def choose(spec: ConvSpec) -> str:
  """The kernel name ``"auto"`` runs for ``spec`` (a pure function of static shapes)."""
  if jax.default_backend() != "cpu":
    return "lax"
  taps = math.prod(spec.kernel)
  cg = spec.in_channels // spec.groups
  og = spec.out_channels // spec.groups
  strided = any(s > 1 for s in spec.stride)
  if spec.groups > 1 and cg <= NARROW_GROUP:
    return "depthwise"
  if not strided and taps >= FFT_MIN_TAPS and cg * og <= FFT_MAX_CHANNEL_PRODUCT:
    return "fft"
  if spec.rank == 1:
    return "lax"
  if spec.rank == 3:
    return "winograd" if supports_winograd(spec) is None else "im2col"
  if taps == 1 or spec.groups > 1:
    return "im2col"
  if strided:
    return "im2col" if cg >= WIDE_CHANNELS else "lax"
  return "hybrid" if cg >= WIDE_CHANNELS else "im2col"


@register("auto")
def conv_auto(x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> jax.Array:
  """The kernel that the benchmark found fastest on CPU for this call's shapes (see ``choose``)."""
  spec = ConvSpec.of(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
  return get(choose(spec)).fn(x, w, **spec.kwargs())
