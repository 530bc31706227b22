"""oneDNN's convolution primitives (forward, backward-data, backward-weights) as XLA FFI custom calls.

The C++ side (``csrc/onednn_conv.cc``, built by ``setup.py`` into ``jaxconv/_onednn*.so``) wraps
XLA's channels-last buffers in oneDNN memory descriptors without copies, lets oneDNN pick its
weight layout (one reorder per call when it differs), and caches one primitive per problem
(shape, dtype, geometry). Activations stay channels-last, or are blocked in oneDNN's layout
(reordered on each call) where its channels-last code is slow: by default (``auto``) for
backward-data without groups into a channel count that is not a multiple of 8, and wherever
channels-last has only reference code. ``$JAXCONV_ONEDNN_LAYOUT`` = ``channels_last`` or
``blocked`` fixes the choice; ``tune`` times both when a problem is first built (alternating,
best of five, reorders included) and keeps blocked if it is 10% faster, which can choose, and so
round, differently from one process to the next. The setting is read when a problem is first
built in the process.
Here the three raw functions of the kernel contract call it through ``jax.ffi.ffi_call``; the
shared mechanism (``jaxconv.kernels.primitives``) adds the transforms.

oneDNN comes from PyPI's ``onednn-cpu-gomp`` (a CPU build on GNU OpenMP). PyPI's newer ``onednn``
(2026.x) is a SYCL build: its CPU engine needs a SYCL CPU device, which its runtime packages do
not provide on Linux (no OpenCL adapter), so it cannot run a primitive on a plain CPU machine.
The shared library is found, in order, at ``$JAXCONV_ONEDNN_LIBRARY``, in the installed
``onednn-cpu-gomp`` distribution, or by the dynamic loader (``libdnnl.so.3``), and loaded before
the extension so that the extension's ``libdnnl.so.3`` dependency resolves to it. Nothing is
loaded at import: the first ``supports_onednn`` call does it, and every failure (no extension
built, no library, no CPU engine, an unsupported problem) becomes its reason string.

Narrow channels: oneDNN vectorizes over a channel axis, so a convolution with few channels on that
axis fills a vector (16 float32 lanes on AVX-512, 8 on AVX2) badly, and its backward-data reorders
dy and dx to and from a blocked layout on every call. Where that loses, the extension runs its own
direct loops instead (``csrc/direct_conv.h``, built for AVX-512 and for AVX2 with FMA; ``info()``
names the build the CPU runs), for float32 2-D problems with stride 1, no dilation, no groups and
pads of at most K - 1: backward-data into fewer input channels than a vector's lanes, dx at most 64
wide (vectorized over dx's width, with the flipped kernel), and the forward and backward-weights of
a convolution from one input channel with a square kernel of at most 5 x 5 and fewer than 16 output
channels (vectorized over the flattened (width, channel) rows of y and dy, with the bias and the
bias's gradient). On LeNet's conv2 the input gradient fell from 0.85-0.9 ms to 0.45-0.55 ms a call
(batch 128, Sapphire Rapids); on a Zen 4 EPYC conv1's forward from 0.38 to 0.27 ms and its kernel
gradient from 0.41 to 0.27 ms; on an AVX2-only Zen 3 EPYC conv1's forward from 0.80-1.0 to 0.52 ms,
its kernel gradient from 0.96-1.03 to 0.58-0.60 ms and conv2's input gradient from 0.78 to 0.64 ms.
``$JAXCONV_ONEDNN_DIRECT=0`` (read on each call) keeps oneDNN's primitives there. The
extension also runs one problem at a time per process: XLA calls independent custom calls from two
of its threads at once, each with its own OpenMP team, and the four threads on two cores made both
calls slower than the two in turn. A call waiting for its turn takes chunks of the running call's
direct loops or batch split (below) instead of idling on a pool thread that work was meant to
share: in LeNet's bfloat16 step, where XLA runs conv2's two gradients at once, the pair took 0.52
ms instead of 0.76.

16-bit dtypes without instructions: where the CPU has none for bfloat16 (or float16), oneDNN
refuses the dtype (AVX2) or emulates it slowly (AVX-512 without BF16), so every op of such a
problem widens its operands to float32, runs oneDNN's float32 primitive and rounds the result back
(``float32_fallback`` gives the reason): the float32 accumulation every kernel has, at float32's
speed less the conversions. On a 2-core AVX2-only EPYC, LeNet trained in bfloat16 at 0.74x the
float32 images/s this way (two runs), against 0.33-0.38x on the kernel ``"auto"`` had picked for
bfloat16 there before (toeplitz, computing in bfloat16).

16-bit kernel gradients: where a convolution has at most ``NARROW_16BIT_OUT`` (16) output channels
per group, its bfloat16 or float16 backward-weights converts x and dy to float32, runs oneDNN's
float32 primitive and rounds dw back. oneDNN 3.2's bfloat16 backward-weights on such narrow outputs
(LeNet's 1 -> 6 and 6 -> 16) ran 1.5-2x slower than float32 on an AMX-BF16 Xeon, and a LeNet
training step with bfloat16 convolutions fell from 1.6x to 1.0x the float32 step's time with this
rule; from 32 output channels on, bfloat16 ran faster and keeps its own code. Likewise a 16-bit
forward from one input channel into at most 16 outputs (LeNet's conv1) runs in float32, on the
extension's single-channel loops: on a Zen 4 EPYC (AVX512-BF16, no AMX) LeNet's bfloat16 conv1
forward fell from 0.64 to 0.40 ms, the conversions included, and the bfloat16 training step from
3.42 to 3.13 ms. Where those loops serve a bfloat16 forward (``_direct``), they take the
bfloat16 operands themselves, widening them as they read them and rounding y to nearest even as
they write it, which gives the bits of the float32 loops on converted operands without XLA's two
conversion passes: LeNet's conv1 forward (batch 128, one jitted call, with the conversions) fell
from 0.88 to 0.33 ms on a 2-core Xeon with AMX. float16, and CPUs without the loops, convert in XLA.
Products of 16-bit values are exact in float32 and the sums are float32 in either code, so only the
summation order differs.

The bias: ``forward_bias`` adds a bias inside oneDNN's forward primitive and ``kernel_grad_bias``
has backward-weights also give its gradient (oneDNN's ``diff_bias``) in the same pass over dy, so
neither needs an XLA add or reduction over the whole activation (in a LeNet training step those
two cost 0.5-0.75 ms of 4.5). Both run in float32 for the bias whatever the activations' dtype.

Threads: oneDNN runs its primitives on its own OpenMP team, not on XLA's intra-op pool (that
needs oneDNN's threadpool runtime, which no PyPI build has). Its workers wait passively between
primitives (``OMP_WAIT_POLICY=passive`` unless the user set it: spinning workers took the cores
from XLA's threads, see ``_load``), and waking them costs each call 0.1-0.2 ms on small problems,
so weight reorders of at most 64 KiB run on the calling thread alone. Problems of at most 256
MFLOP (LeNet's) skip the team: the batch is split into one part per thread of XLA's intra-op pool
(the FFI's thread pool, whose threads are often still awake from XLA's own work), each part run by
a single-threaded primitive on the calling thread or a pool thread, and the kernel gradient's
partial sums added in part order (float32 only); LeNet's training step took 2.76-2.87 ms instead
of 3.0-3.26. ``$JAXCONV_ONEDNN_SPLIT=0`` (read on each call) turns the split off. The extension's
direct loops run on the same pool, with the calling thread taking chunks too. ``$JAXCONV_ONEDNN_THREADS``
(read when a call is traced) caps the threads of that call only, on either: the calling thread's
OpenMP count is put back when it returns. The default (0) leaves OpenMP's default, one thread per
core (measured faster than one thread), and the whole intra-op pool.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.metadata
import importlib.util
import os

import jax
import numpy as np

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels.cpu import NATIVE_16BIT, native_dtype
from jaxconv.kernels.primitives import add_bias, channel_sum
from jaxconv.kernels.registry import register

# The oneDNN distribution the extension is built and run against (see the module docstring).
DISTRIBUTION = "onednn-cpu-gomp"
LIBRARY_ENV = "JAXCONV_ONEDNN_LIBRARY"
EXTENSION_ENV = "JAXCONV_ONEDNN_EXTENSION"
THREADS_ENV = "JAXCONV_ONEDNN_THREADS"
LAYOUT_ENV = "JAXCONV_ONEDNN_LAYOUT"
DIRECT_ENV = "JAXCONV_ONEDNN_DIRECT"
SPLIT_ENV = "JAXCONV_ONEDNN_SPLIT"
LAYOUTS = ("auto", "channels_last", "blocked", "tune")
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
LIBRARY_NAME = "libdnnl.so.3"
# dtype -> the C side's code (jaxconv_onednn_probe); oneDNN refuses what the CPU cannot run.
_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(jax.numpy.bfloat16): 1, np.dtype(np.float16): 2}
_TARGETS = {
  "forward": "jaxconv_onednn_forward",
  "input_grad": "jaxconv_onednn_backward_data",
  "kernel_grad": "jaxconv_onednn_backward_weights",
  "forward_bias": "jaxconv_onednn_forward_bias",
  "kernel_grad_bias": "jaxconv_onednn_backward_weights_bias",
}
_OPS = {"forward": 0, "input_grad": 1, "kernel_grad": 2}
# 16-bit backward-weights with at most this many output channels per group runs in float32 (see the
# module docstring): oneDNN's bfloat16 code for it is slow on narrow outputs.
NARROW_16BIT_OUT = 16


def _library_path() -> str:
  """Where libdnnl is: ``$JAXCONV_ONEDNN_LIBRARY``, the ``onednn-cpu-gomp`` distribution, or the loader's name."""
  if os.environ.get(LIBRARY_ENV):
    return os.environ[LIBRARY_ENV]
  try:
    files = importlib.metadata.files(DISTRIBUTION) or []
  except importlib.metadata.PackageNotFoundError:
    files = []
  for file in files:
    if file.name == LIBRARY_NAME:
      return str(file.locate())
  return LIBRARY_NAME


def _extension_path() -> str | None:
  """The built extension ``jaxconv._onednn`` (wherever the install put it), or ``$JAXCONV_ONEDNN_EXTENSION``."""
  if os.environ.get(EXTENSION_ENV):
    return os.environ[EXTENSION_ENV]
  # find_spec locates without importing (the library has no Python module init), also through
  # the path finders that editable installs add.
  spec = importlib.util.find_spec("jaxconv._onednn")
  return spec.origin if spec is not None and spec.origin else None


@functools.cache
def _load() -> ctypes.CDLL | str:
  """The loaded extension with its FFI targets registered, or why it cannot be had (cached)."""
  library = _library_path()
  # libgomp's default is to spin after each parallel region, which takes the cores from XLA's own
  # threads: a LeNet-sized fwd+bwd step measured ~4x slower in wall and CPU time than with
  # "passive". libgomp reads the policy once, when it loads (here, with libdnnl), so it is set
  # for that load only (other OpenMP runtimes loaded later, e.g. torch's, keep theirs); a user's
  # own OMP_WAIT_POLICY is left as it is.
  policy = os.environ.get(WAIT_POLICY_ENV)
  if policy is None:
    os.environ[WAIT_POLICY_ENV] = "passive"
  try:
    # RTLD_GLOBAL: the extension's dependency on libdnnl.so.3 resolves to this already-loaded copy.
    ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
  except OSError as e:
    return (
      f"{LIBRARY_NAME} could not be loaded from {library!r} ({e}): pip install {DISTRIBUTION}, or set ${LIBRARY_ENV}"
    )
  finally:
    if policy is None:
      del os.environ[WAIT_POLICY_ENV]
  extension = _extension_path()
  if extension is None:
    return (
      "the oneDNN extension jaxconv/_onednn*.so is not built "
      "(reinstall jaxconv with g++ and onednn-devel-cpu-gomp present)"
    )
  try:
    lib = ctypes.CDLL(extension)
  except OSError as e:
    return f"the oneDNN extension {extension!r} could not be loaded: {e}"
  lib.jaxconv_onednn_info.restype = ctypes.c_char_p
  info = lib.jaxconv_onednn_info().decode()
  if info.startswith("error:"):
    return (
      f"oneDNN from {library!r} cannot run on this CPU: {info[len('error: ') :]} (a SYCL build, such as PyPI's "
      f"'onednn' 2026.x, has no CPU engine without a SYCL CPU device): pip install {DISTRIBUTION}"
    )
  problem = [ctypes.c_int64] * 3 + [ctypes.POINTER(ctypes.c_int64)] * 6 + [ctypes.c_int64]
  lib.jaxconv_onednn_probe.restype = ctypes.c_char_p
  lib.jaxconv_onednn_probe.argtypes = problem + [ctypes.c_int64]
  lib.jaxconv_onednn_direct.restype = ctypes.c_int64
  lib.jaxconv_onednn_direct.argtypes = problem
  lib.jaxconv_onednn_direct_calls.restype = ctypes.c_int64
  for target in _TARGETS.values():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")
  return lib


def _library() -> ctypes.CDLL:
  """The loaded extension; ``RuntimeError`` with the reason when it is unavailable."""
  lib = _load()
  if isinstance(lib, ctypes.CDLL):
    return lib
  raise RuntimeError(f"impl='onednn' is unavailable: {lib}")


def info() -> str:
  """oneDNN's version and runtime and the direct loops' build this CPU runs, or why it is unavailable."""
  lib = _load()
  return lib if isinstance(lib, str) else lib.jaxconv_onednn_info().decode()


def _ints(values) -> ctypes.Array:
  values = [int(v) for v in values]
  return (ctypes.c_int64 * max(len(values), 1))(*values)


def _problem(g: ConvGeometry, op: int) -> tuple:
  """The C side's description of ``g``'s primitive ``op``: op, dtype code, rank, shapes, geometry, groups."""
  lo, hi = zip(*g.padding)
  shapes = (g.x_shape, g.w_shape, g.stride, g.dilation, lo, hi)
  return (op, _DTYPE_CODES[np.dtype(g.dtype)], g.rank, *map(_ints, shapes), g.groups)


def _probe_one(g: ConvGeometry, op: int, bias: bool) -> str | None:
  """Builds (and caches, C++ side) one primitive of ``g``: None, or oneDNN's refusal."""
  reason = _library().jaxconv_onednn_probe(*_problem(g, op), int(bias))
  return None if reason is None else reason.decode()


def _direct(g: ConvGeometry, op: str) -> bool:
  """Whether the extension's direct loops run ``g``'s ``op`` (read when a call is traced; see the module docstring)."""
  return bool(_library().jaxconv_onednn_direct(*_problem(g, _OPS[op])))


def _direct_calls() -> int:
  """How many calls have run on the extension's direct loops in this process (what tests check)."""
  return int(_library().jaxconv_onednn_direct_calls())


@functools.lru_cache(maxsize=4096)
def _probe(g: ConvGeometry) -> str | None:
  """Builds (and caches) the three primitives of ``g``: None, or oneDNN's refusal."""
  for name, op in _OPS.items():
    reason = _probe_one(g, op, False)
    if reason is not None:
      return f"{name} in {np.dtype(g.dtype)}: {reason}"
  return None


@functools.lru_cache(maxsize=4096)
def _bias_ok(g: ConvGeometry, op: str) -> bool:
  """Whether oneDNN builds ``g``'s forward (``op="forward"``) or backward-weights with a bias."""
  return _probe_one(g, _OPS[op], True) is None


def supports_onednn(g: ConvGeometry) -> str | None:
  """Why oneDNN cannot serve ``g`` (library, extension, backend, rank, dtype, or oneDNN's own refusal), or None."""
  lib = _load()
  if isinstance(lib, str):
    return lib
  if jax.default_backend() != "cpu":
    return f"oneDNN runs on the CPU backend only; the default backend is {jax.default_backend()!r}"
  if not 1 <= g.rank <= 3:
    return f"oneDNN convolutions have 1-3 spatial axes; got {g.rank}"
  if np.dtype(g.dtype) not in _DTYPE_CODES:
    return f"oneDNN convolutions take float32, bfloat16 or float16; got {np.dtype(g.dtype)}"
  return _probe(_float32(g) if float32_fallback(g) is not None else g)


def _threads() -> int:
  """The OpenMP team size to cap each call at, from ``$JAXCONV_ONEDNN_THREADS`` (0: OpenMP's default)."""
  value = os.environ.get(THREADS_ENV, "0")
  try:
    return max(int(value), 0)
  except ValueError:
    raise ValueError(f"${THREADS_ENV} must be an int; got {value!r}") from None


def _check_layout() -> None:
  """``ValueError`` unless ``$JAXCONV_ONEDNN_LAYOUT`` (read by the C++ side when it builds a primitive) is valid."""
  value = os.environ.get(LAYOUT_ENV, "auto")
  if value not in LAYOUTS:
    raise ValueError(f"${LAYOUT_ENV} must be one of {LAYOUTS}; got {value!r}")


def _call(name: str, a: jax.Array, b: jax.Array, g: ConvGeometry, shape: tuple[int, ...]) -> jax.Array:
  """One custom call; vmapped axes reach the C++ side as leading axes (folded into N where only ``a`` has them)."""
  call = jax.ffi.ffi_call(_TARGETS[name], jax.ShapeDtypeStruct(shape, a.dtype), vmap_method="expand_dims")
  return _attrs_call(call, g, a, b)


def _attrs_call(call, g: ConvGeometry, *operands: jax.Array):
  """``call(*operands)`` with ``g``'s geometry and the thread cap as the handler's attributes."""
  _library()
  _check_layout()
  lo, hi = zip(*g.padding)
  return call(
    *operands,
    stride=np.asarray(g.stride, np.int64),
    dilation=np.asarray(g.dilation, np.int64),
    pad_lo=np.asarray(lo, np.int64),
    pad_hi=np.asarray(hi, np.int64),
    groups=np.int64(g.groups),
    threads=np.int64(_threads()),
  )


def float32_fallback(g: ConvGeometry) -> str | None:
  """Why ``g``'s 16-bit problem runs in float32 here, or None (another dtype, or oneDNN computes it natively).

  Where the CPU has no instructions for the 16-bit dtype (``jaxconv.kernels.cpu.NATIVE_16BIT``),
  or oneDNN refuses it anyway (e.g. under ``ONEDNN_MAX_CPU_ISA``), every op of the problem widens
  its operands to float32, runs the float32 primitive and rounds the result back to the dtype (see
  the module docstring).

  Args:
    g: the convolution, x ``(N, *spatial, C_in)`` and w ``(*kernel, C_in // groups, C_out)``.

  Returns:
    The reason, or None.
  """
  dtype = np.dtype(g.dtype)
  if dtype.itemsize != 2 or dtype not in _DTYPE_CODES:
    return None
  if not native_dtype(dtype):
    return f"this CPU has no {dtype.name} instructions (none of {', '.join(NATIVE_16BIT[dtype.name])})"
  return None if isinstance(_load(), str) else _probe(g)


def _operands(op: str, a: jax.Array, b: jax.Array, g: ConvGeometry) -> tuple[jax.Array, jax.Array, ConvGeometry]:
  """The operands and geometry ``op`` runs on: ``a``, ``b`` and ``g``, or float32 ones of a float32 problem.

  float32 wherever ``float32_fallback(g)`` gives a reason, for backward-weights where
  ``narrow_16bit_kernel_grad(g)``, and for the forward where ``single_channel_16bit_forward(g)``
  unless the direct loops take the 16-bit operands themselves.
  """
  widen = float32_fallback(g) is not None
  if op == "kernel_grad":
    widen = widen or narrow_16bit_kernel_grad(g)
  elif op == "forward":
    widen = widen or (single_channel_16bit_forward(g) and not _direct(g, "forward"))
  if not widen:
    return a, b, g
  return a.astype(np.float32), b.astype(np.float32), _float32(g)


def _float32(g: ConvGeometry) -> ConvGeometry:
  """``g`` as a float32 problem (what a widened 16-bit call runs)."""
  return dataclasses.replace(g, dtype=np.dtype(np.float32))


def input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """oneDNN's backward-data: dy ``(N, *out_spatial, C_out)``, w -> dx ``(N, *spatial, C_in)``."""
  dyd, wd, gd = _operands("input_grad", dy, w, g)
  return _call("input_grad", dyd, wd, gd, (dy.shape[0], *g.spatial, g.in_channels)).astype(dy.dtype)


def kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  """oneDNN's backward-weights: x ``(N, *spatial, C_in)``, dy -> dw ``(*kernel, C_in // groups, C_out)``."""
  xk, dyk, gk = _operands("kernel_grad", x, dy, g)
  return _call("kernel_grad", xk, dyk, gk, g.w_shape).astype(x.dtype)


def narrow_16bit_kernel_grad(g: ConvGeometry) -> bool:
  """Whether ``g``'s backward-weights runs in float32: 16-bit, at most ``NARROW_16BIT_OUT`` outputs per group.

  Args:
    g: the convolution, x ``(N, *spatial, C_in)`` and w ``(*kernel, C_in // groups, C_out)``.

  Returns:
    True for bfloat16 or float16 with ``C_out // groups <= NARROW_16BIT_OUT``.
  """
  return np.dtype(g.dtype).itemsize == 2 and g.group_out <= NARROW_16BIT_OUT


def single_channel_16bit_forward(g: ConvGeometry) -> bool:
  """Whether ``g``'s forward runs in float32: 16-bit, one input channel, at most ``NARROW_16BIT_OUT`` outputs.

  Args:
    g: the convolution, x ``(N, *spatial, C_in)`` and w ``(*kernel, C_in // groups, C_out)``.

  Returns:
    True for bfloat16 or float16 with ``C_in == 1`` and ``C_out <= NARROW_16BIT_OUT``.
  """
  return np.dtype(g.dtype).itemsize == 2 and g.in_channels == 1 and g.out_channels <= NARROW_16BIT_OUT


def forward_bias(x: jax.Array, w: jax.Array, b: jax.Array, g: ConvGeometry) -> jax.Array:
  """oneDNN's forward with the bias added inside: x ``(N, *spatial, C_in)``, w, b ``(C_out,)`` -> y."""
  xf, wf, gf = _operands("forward", x, w, g)
  if not _bias_ok(gf, "forward"):
    return add_bias(forward(x, w, g), b)
  shape = (x.shape[0], *g.out_spatial, g.out_channels)
  call = jax.ffi.ffi_call(_TARGETS["forward_bias"], jax.ShapeDtypeStruct(shape, xf.dtype))
  return _attrs_call(call, gf, xf, wf, b.astype(np.float32)).astype(x.dtype)


def kernel_grad_bias(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> tuple[jax.Array, jax.Array]:
  """oneDNN's backward-weights with ``diff_bias``: x, dy -> dw and db ``(C_out,)`` (dy's sum over N and space)."""
  xk, dyk, gk = _operands("kernel_grad", x, dy, g)
  if not _bias_ok(gk, "kernel_grad"):
    return kernel_grad(x, dy, g), channel_sum(dy)
  results = (jax.ShapeDtypeStruct(g.w_shape, xk.dtype), jax.ShapeDtypeStruct((g.out_channels,), np.float32))
  dw, db = _attrs_call(jax.ffi.ffi_call(_TARGETS["kernel_grad_bias"], results), gk, xk, dyk)
  return dw.astype(x.dtype), db.astype(x.dtype)


@register(
  "onednn",
  supports=supports_onednn,
  input_grad=input_grad,
  kernel_grad=kernel_grad,
  forward_bias=forward_bias,
  kernel_grad_bias=kernel_grad_bias,
  local=True,
)
def forward(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """oneDNN's convolution primitives through XLA's FFI (channels-last, cached per shape)."""
  xf, wf, gf = _operands("forward", x, w, g)
  return _call("forward", xf, wf, gf, (x.shape[0], *g.out_spatial, g.out_channels)).astype(x.dtype)


__all__ = [
  "DISTRIBUTION",
  "NARROW_16BIT_OUT",
  "float32_fallback",
  "forward",
  "forward_bias",
  "info",
  "input_grad",
  "kernel_grad",
  "kernel_grad_bias",
  "narrow_16bit_kernel_grad",
  "single_channel_16bit_forward",
  "supports_onednn",
]
