"""The default kernel: picks an implementation per call from static shapes only.

The rule is what ``experiments/compare_kernels.py`` measured on XLA:CPU (2 cores, forward +
backward, see ``docs/bench/kernels.md``); on other backends ``"auto"`` is lax. ``K`` is the number
of kernel taps, ``Cg = C_in / groups``, ``Og = C_out / groups``, ``|x|`` the input's bytes. First
match wins:

1. stride 1, K >= 49, Cg * Og <= 64   -> "fft"        (large kernels over few channels)
2. one spatial axis                   -> "onednn" where it serves the call on a CPU with AVX-512,
                                         else "lax"   (XLA is fast on 1-D on AVX2)
3. oneDNN serves the call             -> "onednn"     (PyTorch's own CPU convolutions; a 16-bit
                                         dtype the CPU has no instructions for runs in float32)

and where the oneDNN kernel is not available (not built, no library, another dtype):

4. groups > 1 and Cg <= 4             -> "depthwise"  (XLA's grouped conv is 10-20x slower)
5. three spatial axes                 -> "winograd" for 3x3x3 stride 1 undilated, else "im2col"
6. groups > 1                         -> "im2col"     (lax's grouped backward is 10x slower)
7. Cg < 32, C_out <= 16, W_p <= 8 k_w, T fits -> "toeplitz" (LeNet-like: narrow images, few channels)
8. Cg < 32: stride 1 -> "im2col", strided -> "lax" (narrow stems)
9. |x| < 16 MiB, or XLA_FLAGS turn YNNPACK convolutions off -> "lax" (XLA's conv is at its best)
10. K == 1 -> "im2col", else "hybrid"                 (lax's kernel gradient slows 2x on big x)

With oneDNN, rule 3 takes 11 of the 13 float32 benchmark shapes (rule 2 a 12th on AVX-512):
forward + backward it was the fastest kernel on 10 of them and within 7% of toeplitz on LeNet's
conv1, and a LeNet training epoch runs 1.36x faster with it than with toeplitz for both
convolutions (``experiments/bench_training.py --impl auto --impl onednn``, before this rule).
Rule 7 trades the banded GEMM's ``W_p / k_w`` redundant multiply-adds (``W_p`` the padded last
axis, ``k_w`` the kernel's extent on it) for a GEMM that is wide even when C_out is not.

Rule 2 and the oneDNN kernel read the CPU's ISA flags at run time (``jaxconv.kernels.cpu``), since
machines of one kind differ. On 1-D, oneDNN's AVX-512 code ran ``conv1d_k5`` 1.5x faster than lax
forward + backward on an AVX-512 Xeon (and 1.4x on an AVX-512 EPYC); the rule was first set on an AVX2
machine, where lax was the fastest kernel on 1-D. In bfloat16 on a CPU with AMX-BF16, oneDNN ran
LeNet's conv2 and the larger 2-D shapes 2.5-8x faster than lax, im2col and toeplitz. Where the CPU
has no bfloat16 instructions, the oneDNN kernel computes bfloat16 in float32
(``onednn.float32_fallback``), and that was still the fastest kernel forward + backward on the 11
bfloat16 benchmark shapes that reach rule 3, 1.35-2.9x faster than the next fastest (lax or
jaxconv's own, computing in bfloat16) on a 2-core AVX2-only EPYC (``compare_kernels.py --dtype
bfloat16``). There it also ran ``conv1d_k5`` 1.13x faster than lax, which rule 2 keeps.

``"hybrid"`` keeps XLA's forward convolution (and its input gradient at stride 1) and replaces
its kernel gradient. FFT would also win on some 5x5 layers, but it spreads rounding noise over the whole
output, so that the gradient of one output unit is no longer exactly zero outside its receptive
field; ``"auto"`` takes that trade only from 7x7 kernels on, where the win is large. The choice never
depends on values or timing, so it is the same under jit, grad and vmap, and every chosen kernel
supports the call (``tests/test_kernels.py`` checks both).
"""

from __future__ import annotations

import math
import os

import jax

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.cpu import isa_flags
from jaxconv.kernels.registry import available, get, register
from jaxconv.kernels.toeplitz import padded_width, supports_toeplitz
from jaxconv.kernels.winograd import supports_winograd

# Rule thresholds (see the module docstring).
NARROW_GROUP = 4
FFT_MIN_TAPS = 49
FFT_MAX_CHANNEL_PRODUCT = 64
WIDE_CHANNELS = 32
NARROW_OUTPUT = 16
MAX_BANDED_REDUNDANCY = 8
LARGE_INPUT_BYTES = 16 * 2**20


def ynnpack_convolutions() -> bool:
  """False when ``XLA_FLAGS`` route convolutions away from YNNPACK.

  With ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` XLA's own dense
  convolutions get 2-3x faster (forward and backward) and beat the GEMM kernels here.
  """
  return "-individual_convolution" not in os.environ.get("XLA_FLAGS", "")


def banded_pays(spec: ConvGeometry) -> bool:
  """Rule 6: few output channels, a padded width at most ``MAX_BANDED_REDUNDANCY`` kernel extents, T fits."""
  narrow = spec.out_channels <= NARROW_OUTPUT and padded_width(spec) <= MAX_BANDED_REDUNDANCY * spec.kernel_extent[-1]
  return narrow and supports_toeplitz(spec) is None


def onednn_serves(spec: ConvGeometry) -> bool:
  """Whether the ``"onednn"`` kernel is registered, built, loadable and accepts ``spec``."""
  return "onednn" in available() and get("onednn").refusal(spec) is None


def onednn_pays(spec: ConvGeometry) -> bool:
  """Rules 2 and 3: oneDNN serves ``spec`` (on 1-D, on a CPU with AVX-512)."""
  if spec.rank == 1 and "avx512f" not in isa_flags():
    return False
  return onednn_serves(spec)


def choose(spec: ConvGeometry) -> str:
  """The kernel name ``"auto"`` runs for ``spec`` (a pure function of static shapes)."""
  if jax.default_backend() != "cpu":
    return "lax"
  taps = spec.taps
  cg, og = spec.group_in, spec.group_out
  strided = any(s > 1 for s in spec.stride)
  if not strided and taps >= FFT_MIN_TAPS and cg * og <= FFT_MAX_CHANNEL_PRODUCT:
    return "fft"
  if onednn_pays(spec):
    return "onednn"
  if spec.rank == 1:
    return "lax"
  if spec.groups > 1 and cg <= NARROW_GROUP:
    return "depthwise"
  if spec.rank == 3:
    return "winograd" if supports_winograd(spec) is None else "im2col"
  if spec.groups > 1:
    return "im2col"
  if cg < WIDE_CHANNELS and banded_pays(spec):
    return "toeplitz"
  if cg < WIDE_CHANNELS:
    return "lax" if strided else "im2col"
  if math.prod(spec.x_shape) * spec.dtype.itemsize < LARGE_INPUT_BYTES or not ynnpack_convolutions():
    return "lax"
  return "im2col" if taps == 1 else "hybrid"


def _never_run(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """The kernel that the benchmark found fastest on CPU for this call's shapes (see ``choose``)."""
  raise AssertionError("'auto' is dispatched to the kernel that choose() names before anything runs")


# Local: no, since it may pick fft, winograd or toeplitz.
register("auto", dispatch=choose, local=False)(_never_run)

__all__ = ["choose"]
