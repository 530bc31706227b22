"""The geometry of a window operation, resolved once: padding, stride, dilation, groups, output size.

Every public function canonicalises its arguments into one frozen, hashable object here, in
Python, on static shapes, so that bad input raises ``ValueError``/``TypeError`` naming the
argument before anything reaches XLA (also under ``jax.jit``), and the kernels, the pools, the
layers and the receptive-field walk all read the same resolved numbers:

- ``Window``: one window per spatial axis (a pooling window or a conv kernel's taps) on an input
  of static spatial shape: kernel, stride, dilation, explicit ``(lo, hi)`` pads, output size.
- ``ConvGeometry``: a ``Window`` plus the batch, the channels, the groups and the dtype of one
  channels-last convolution ``x (N, *spatial, C_in) * w (*kernel, C_in // groups, C_out)``; it is
  the static description passed to every kernel (``jaxconv.kernels``).

Padding strings follow one of two conventions (explicit ints and pairs mean the same in both):

=========  ====================================  ==============================================
string     ``"scipy"`` (correlate/convolve)      ``"lax"`` (conv, pooling)
=========  ====================================  ==============================================
valid      ``(0, 0)``                            ``(0, 0)``
same       ``(k_eff // 2, (k_eff - 1) // 2)``    ``t = max((ceil(n/s) - 1) s + k_eff - n, 0)``,
                                                 ``(t // 2, t - t // 2)``
full       ``(k_eff - 1, k_eff - 1)``            ``(k_eff - 1, k_eff - 1)``
causal     ``(k_eff - 1, 0)`` (one spatial axis)  ``(k_eff - 1, 0)`` (one spatial axis)
=========  ====================================  ==============================================

``k_eff = d * (k - 1) + 1`` is the dilated kernel extent. For an even kernel the two "same"
rules put the extra pad on opposite sides: scipy on the low side (its output is the centre of
the "full" result), lax on the high side. At stride 1 both keep ``n`` outputs.

>>> import jaxconv as jc
>>> jc.output_shape((28, 28), 5, padding=2)
(28, 28)
>>> conv_geometry((8, 28, 28, 1), (5, 5, 1, 6), "float32", padding="same").padding
((2, 2), (2, 2))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np

from jaxconv._checks import check_allocatable, check_bool, check_int, is_int, normalize_ints

Pair = tuple[int, int]
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]
Convention = Literal["scipy", "lax"]

_PADDING_STRINGS = ("valid", "same", "full", "causal")
# padding_mode -> numpy.pad's mode that fills the resolved pads the same way.
PADDING_MODES = {
  "zeros": "constant",
  "reflect": "reflect",
  "replicate": "edge",
  "circular": "wrap",
  "symmetric": "symmetric",
}


def _effective_kernel_size(k: int, d: int) -> int:
  """Extent of a ``k``-tap kernel with ``d - 1`` zeros between taps."""
  return d * (k - 1) + 1


def _ceil_div(a: int, b: int) -> int:
  """``ceil(a / b)`` for ints."""
  return -(-a // b)


def _string_pads(mode: str, n: int, k_eff: int, s: int, convention: Convention) -> Pair:
  """One axis's pads for a padding string."""
  if mode == "valid":
    return (0, 0)
  if mode == "full":
    return (k_eff - 1, k_eff - 1)
  if mode == "causal":
    return (k_eff - 1, 0)
  if convention == "scipy":  # "same"
    return (k_eff // 2, (k_eff - 1) // 2)
  total = max((_ceil_div(n, s) - 1) * s + k_eff - n, 0)
  return (total // 2, total - total // 2)


def _is_pair(p: object) -> bool:
  return isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 and all(is_int(v) for v in p)


def resolve_padding(
  padding: Padding,
  spatial: Sequence[int],
  kernel: Sequence[int],
  stride: int | Sequence[int] = 1,
  dilation: int | Sequence[int] = 1,
  *,
  convention: Convention = "lax",
) -> tuple[Pair, ...]:
  """Any padding form -> one explicit non-negative ``(lo, hi)`` pair per spatial axis."""
  rank = len(spatial)
  if len(kernel) != rank:
    raise ValueError(f"kernel has {len(kernel)} spatial axes but the input has {rank}")
  strides = normalize_ints(stride, rank, "stride")
  dilations = normalize_ints(dilation, rank, "dilation")
  if isinstance(padding, str):
    mode = padding.lower()
    if mode not in _PADDING_STRINGS:
      raise ValueError(f"padding must be one of {_PADDING_STRINGS}, an int, ints or (lo, hi) pairs; got {padding!r}")
    if mode == "causal" and rank != 1:
      raise ValueError(f"padding='causal' needs exactly one spatial axis; got {rank} (spatial shape {tuple(spatial)})")
    extents = (_effective_kernel_size(k, d) for k, d in zip(kernel, dilations))
    return tuple(_string_pads(mode, n, e, s, convention) for n, e, s in zip(spatial, extents, strides))
  pairs: tuple[Pair, ...]
  if is_int(padding):
    both = int(cast(int, padding))
    pairs = ((both, both),) * rank
  elif isinstance(padding, Sequence) and len(padding) == rank:
    entries = list(padding)
    if all(is_int(p) for p in entries):
      pairs = tuple((int(cast(int, p)), int(cast(int, p))) for p in entries)
    elif all(_is_pair(p) for p in entries):
      pairs = tuple((int(p[0]), int(p[1])) for p in cast(list[Sequence[int]], entries))
    else:
      raise ValueError(f"padding must be {rank} ints or {rank} (lo, hi) int pairs; got {padding!r}")
  elif isinstance(padding, Sequence):
    raise ValueError(f"padding must have one entry per spatial axis ({rank}); got {len(padding)}: {padding!r}")
  else:
    raise TypeError(f"padding must be a string, an int or a sequence; got {type(padding).__name__}: {padding!r}")
  if any(v < 0 for pair in pairs for v in pair):
    raise ValueError(f"padding must be non-negative; got {padding!r}")
  return pairs


def output_size(n: int, k: int, pads: Pair, s: int = 1, d: int = 1, ceil_mode: bool = False) -> int:
  """One axis: ``floor((n + lo + hi - d*(k-1) - 1) / s) + 1`` windows.

  With ``ceil_mode`` (PyTorch's pools): ``ceil(...) + 1``, one fewer if the last window would
  start at or past ``n + lo`` (in the high padding only).
  """
  span = n + pads[0] + pads[1] - _effective_kernel_size(k, d)
  if not ceil_mode:
    return span // s + 1
  out = _ceil_div(span, s) + 1
  return out - 1 if (out - 1) * s >= n + pads[0] else out


def _check_fits(
  spatial: Sequence[int], kernel: Sequence[int], pairs: Sequence[Pair], dilation: Sequence[int], name: str = "w"
) -> None:
  """Raise ``ValueError`` when the dilated kernel is larger than the padded input on some axis."""
  for axis, (n, k, (lo, hi), d) in enumerate(zip(spatial, kernel, pairs, dilation)):
    k_eff = _effective_kernel_size(k, d)
    if n + lo + hi < k_eff:
      raise ValueError(
        f"{name}: kernel extent {k_eff} (size {k}, dilation {d}) is larger than the padded input "
        f"{n} + {lo} + {hi} = {n + lo + hi} on spatial axis {axis}"
      )


def check_padding_mode(padding_mode: object, spatial: Sequence[int], pads: Sequence[Pair]) -> str:
  """``padding_mode`` if known and able to fill ``pads`` on an input of ``spatial`` shape.

  As ``numpy.pad`` and PyTorch: "reflect" needs pads < n, "circular" and "symmetric" pads <= n.
  """
  if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
    raise ValueError(f"padding_mode must be one of {tuple(PADDING_MODES)}; got {padding_mode!r}")
  if padding_mode in ("zeros", "replicate") or not any(lo or hi for lo, hi in pads):
    if padding_mode == "replicate" and any(n == 0 and (lo or hi) for n, (lo, hi) in zip(spatial, pads)):
      raise ValueError("padding: padding_mode='replicate' cannot fill pads of an empty spatial axis")
    return padding_mode
  strict = padding_mode == "reflect"
  for axis, (n, (lo, hi)) in enumerate(zip(spatial, pads)):
    limit = n - 1 if strict else n
    if max(lo, hi) > limit:
      raise ValueError(
        f"padding: padding_mode={padding_mode!r} needs pads {'<' if strict else '<='} the input size {n} "
        f"on spatial axis {axis}; "
        f"got ({lo}, {hi})"
      )
  return padding_mode


@dataclasses.dataclass(frozen=True)
class Window:
  """One window per spatial axis over an input of static spatial shape, fully resolved.

  ``kernel`` is the number of taps per axis (a pool's window), ``padding`` explicit ``(lo, hi)``
  pairs; ``ceil_mode`` keeps PyTorch's extra partial window at the high end (pools only).
  """

  spatial: tuple[int, ...]
  kernel: tuple[int, ...]
  stride: tuple[int, ...]
  dilation: tuple[int, ...]
  padding: tuple[Pair, ...]
  ceil_mode: bool = False

  @property
  def rank(self) -> int:
    """Number of spatial axes."""
    return len(self.spatial)

  @property
  def kernel_extent(self) -> tuple[int, ...]:
    """The dilated kernel extent per axis, ``d * (k - 1) + 1``."""
    return tuple(_effective_kernel_size(k, d) for k, d in zip(self.kernel, self.dilation))

  @property
  def padded(self) -> tuple[int, ...]:
    """The spatial shape with the pads, ``n + lo + hi`` per axis."""
    return tuple(n + lo + hi for n, (lo, hi) in zip(self.spatial, self.padding))

  @property
  def out_spatial(self) -> tuple[int, ...]:
    """The output spatial shape (number of windows per axis)."""
    return tuple(
      output_size(n, k, p, s, d, self.ceil_mode)
      for n, k, p, s, d in zip(self.spatial, self.kernel, self.padding, self.stride, self.dilation)
    )

  @property
  def taps(self) -> int:
    """Taps per window, ``prod(kernel)``."""
    return math.prod(self.kernel)


def resolve_window(
  spatial: Sequence[int],
  kernel: int | Sequence[int],
  padding: Padding = "valid",
  stride: int | Sequence[int] | None = 1,
  dilation: int | Sequence[int] = 1,
  *,
  convention: Convention = "lax",
  ceil_mode: bool = False,
  kernel_name: str = "w",
) -> Window:
  """Validate and resolve a window over ``spatial``; ``stride=None`` means the window itself (pools)."""
  spatial = tuple(int(n) for n in spatial)
  rank = len(spatial)
  kernel = normalize_ints(kernel, rank, kernel_name)
  strides = kernel if stride is None else normalize_ints(stride, rank, "stride")
  dilations = normalize_ints(dilation, rank, "dilation")
  pads = resolve_padding(padding, spatial, kernel, strides, dilations, convention=convention)
  window = Window(spatial, kernel, strides, dilations, pads, check_bool(ceil_mode, "ceil_mode"))
  # With ceil_mode (PyTorch's pools) a window may overhang an input smaller than it: one output.
  if not window.ceil_mode or min(window.out_spatial, default=1) < 1:
    _check_fits(spatial, kernel, pads, dilations, name=kernel_name)
  check_allocatable(window.padded, 1, "padding", "padded input's spatial shape")
  return window


@dataclasses.dataclass(frozen=True)
class ConvGeometry(Window):
  """One channels-last convolution: x ``(N, *spatial, C_in)``, w ``(*kernel, C_in // groups, C_out)``.

  The static description every kernel receives (frozen and hashable: a primitive parameter).
  """

  batch: int = 1
  in_channels: int = 1
  out_channels: int = 1
  groups: int = 1
  dtype: np.dtype = np.dtype(np.float32)

  @property
  def x_shape(self) -> tuple[int, ...]:
    """``(N, *spatial, C_in)``."""
    return (self.batch, *self.spatial, self.in_channels)

  @property
  def w_shape(self) -> tuple[int, ...]:
    """``(*kernel, C_in // groups, C_out)``."""
    return (*self.kernel, self.in_channels // self.groups, self.out_channels)

  @property
  def out_shape(self) -> tuple[int, ...]:
    """``(N, *out_spatial, C_out)``."""
    return (self.batch, *self.out_spatial, self.out_channels)

  @property
  def group_in(self) -> int:
    """Input channels per group, ``C_in // groups``."""
    return self.in_channels // self.groups

  @property
  def group_out(self) -> int:
    """Output channels per group, ``C_out // groups``."""
    return self.out_channels // self.groups

  @property
  def empty(self) -> bool:
    """Whether x, w or y has no elements (no kernel runs then: ``jaxconv.ops`` answers itself)."""
    return 0 in self.x_shape or 0 in self.w_shape or 0 in self.out_shape

  @property
  def flops(self) -> int:
    """Multiply-adds x 2 of the forward pass."""
    return 2 * math.prod(self.out_shape) * self.taps * self.group_in

  def with_batch(self, batch: int) -> ConvGeometry:
    """The same convolution on a batch of ``batch`` images."""
    return dataclasses.replace(self, batch=batch)

  def transposed(self) -> ConvGeometry:
    """The geometry of ``w``'s input gradient seen as a forward conv: C_out -> C_in, same window."""
    return dataclasses.replace(self, in_channels=self.out_channels, out_channels=self.in_channels)


def check_channels(x_shape: Sequence[int], w_shape: Sequence[int], groups: int) -> None:
  """Raise unless w ``(*kernel, C_in // groups, C_out)`` fits x ``(N, *spatial, C_in)`` and ``groups``."""
  if len(w_shape) != len(x_shape):
    raise ValueError(
      f"w must have ndim {len(x_shape)} ((*kernel, C_in // groups, C_out) for x of shape {tuple(x_shape)}); "
      f"got shape {tuple(w_shape)}"
    )
  c_in, c_out = x_shape[-1], w_shape[-1]
  if c_in % groups:
    raise ValueError(f"groups={groups} must divide the input channels C_in={c_in}")
  if c_out % groups:
    raise ValueError(f"groups={groups} must divide the output channels C_out={c_out} (w.shape[-1])")
  if w_shape[-2] * groups != c_in:
    raise ValueError(
      f"w: channel mismatch: x has C_in={c_in}, so w.shape[-2] must be C_in // groups = {c_in // groups}; "
      f"got w of shape {tuple(w_shape)}"
    )
  if any(k < 1 for k in w_shape[:-2]):
    raise ValueError(f"w must have at least one tap on every spatial axis; got shape {tuple(w_shape)}")


def conv_geometry(
  x_shape: Sequence[int],
  w_shape: Sequence[int],
  dtype: object,
  *,
  stride: int | Sequence[int] = 1,
  padding: Padding = "valid",
  dilation: int | Sequence[int] = 1,
  groups: int = 1,
  convention: Convention = "lax",
) -> ConvGeometry:
  """Validate and resolve a channels-last conv: x ``(N, *spatial, C_in)``, w ``(*kernel, C_in // groups, C_out)``."""
  x_shape, w_shape = tuple(int(n) for n in x_shape), tuple(int(n) for n in w_shape)
  groups = check_int(groups, "groups", minimum=1)
  check_channels(x_shape, w_shape, groups)
  window = resolve_window(x_shape[1:-1], w_shape[:-2], padding, stride, dilation, convention=convention)
  np_dtype = np.dtype(cast(Any, dtype))
  geometry = ConvGeometry(
    **{f.name: getattr(window, f.name) for f in dataclasses.fields(Window)},
    batch=x_shape[0],
    in_channels=x_shape[-1],
    out_channels=w_shape[-1],
    groups=groups,
    dtype=np_dtype,
  )
  check_allocatable(
    (geometry.batch, *geometry.padded, geometry.in_channels), np_dtype.itemsize, "padding", "padded input"
  )
  check_allocatable(geometry.out_shape, np_dtype.itemsize, "padding", "output")
  return geometry


def output_shape(
  spatial: int | Sequence[int],
  kernel: int | Sequence[int],
  padding: Padding = "valid",
  stride: int | Sequence[int] = 1,
  dilation: int | Sequence[int] = 1,
  *,
  ceil_mode: bool = False,
  transpose: bool = False,
  output_padding: int | Sequence[int] = 0,
) -> tuple[int, ...]:
  """Output spatial shape of a convolution, a pooling window or a transposed convolution, computed without running it.

  Per axis ``floor((n + lo + hi - k_eff) / s) + 1`` (``ceil`` with ``ceil_mode``), where
  ``k_eff = d * (k - 1) + 1`` and ``(lo, hi)`` are the pads ``padding`` resolves to by lax's rule
  (the sizes are the same under scipy's rule, only the sides of the pads differ).

  Args:
    spatial: the input's spatial shape: an int (one axis) or a sequence of ints.
    kernel: the kernel or window: an int (every axis) or one int per axis.
    padding: ``"valid"``, ``"same"``, ``"full"``, ``"causal"``, an int, one int per axis, or one
      ``(lo, hi)`` pair per axis.
    stride: an int or one int per axis, at least 1.
    dilation: an int or one int per axis, at least 1.
    ceil_mode: as in the pools: keep a last, partial window.
    transpose: give ``jaxconv.conv_transpose``'s output shape instead.
    output_padding: with ``transpose``, outputs added on the high side of each axis.

  Returns:
    The output spatial shape, a tuple of ints.

  Raises:
    ValueError: a bad ``padding``, ``stride``, ``dilation`` or ``output_padding``, or a kernel
      larger than the padded input; the message names the argument.
    TypeError: an argument of the wrong type.

  Example:
    >>> output_shape((28, 28), (5, 5), padding="same", stride=2)
    (14, 14)
    >>> output_shape(5, 2, stride=2, ceil_mode=True)
    (3,)
    >>> output_shape(7, 3, padding=1, stride=2, transpose=True, output_padding=1)
    (14,)
  """
  if is_int(spatial):
    spatial = (spatial,)  # type: ignore[assignment]
  if not isinstance(spatial, Sequence) or isinstance(spatial, str):
    raise TypeError(f"spatial must be an int or a sequence of ints; got {spatial!r}")
  spatial = normalize_ints(tuple(spatial), len(spatial), "spatial", minimum=0)
  if check_bool(transpose, "transpose"):
    if check_bool(ceil_mode, "ceil_mode"):
      raise ValueError("ceil_mode must be False for a transposed convolution (it is a pooling option)")
    return transpose_output_shape(
      spatial, normalize_ints(kernel, len(spatial), "kernel"), padding, stride, dilation, output_padding
    )[1]
  if any(normalize_ints(output_padding, len(spatial), "output_padding", minimum=0)):
    raise ValueError(f"output_padding must be 0 unless transpose=True; got {output_padding!r}")
  return resolve_window(
    spatial, kernel, padding, stride, dilation, ceil_mode=ceil_mode, kernel_name="kernel"
  ).out_spatial


def _transpose_output_size(n: int, k_eff: int, pads: Pair, s: int, output_padding: int = 0) -> int:
  """One axis of a transposed convolution: ``(n - 1) * s + k_eff - lo - hi + output_padding``."""
  return (n - 1) * s + k_eff - pads[0] - pads[1] + output_padding


def transpose_output_shape(
  spatial: Sequence[int],
  kernel: Sequence[int],
  padding: Padding,
  stride: int | Sequence[int],
  dilation: int | Sequence[int],
  output_padding: int | Sequence[int] = 0,
) -> tuple[tuple[Pair, ...], tuple[int, ...]]:
  """The pads of the forward conv a transposed conv of x's ``spatial`` shape transposes, and its output shape.

  Each axis gives ``(n - 1) * s + k_eff - lo - hi + op`` outputs (``"same"``: ``n * s + op``), with
  ``0 <= op < max(s, d)`` (PyTorch's ``output_padding``; else a ``ValueError`` naming it).
  """
  rank = len(spatial)
  strides = normalize_ints(stride, rank, "stride")
  dilations = normalize_ints(dilation, rank, "dilation")
  ops_ = normalize_ints(output_padding, rank, "output_padding", minimum=0)
  for axis, (op, s, d) in enumerate(zip(ops_, strides, dilations)):
    if op >= max(s, d):
      raise ValueError(
        f"output_padding must be < max(stride, dilation) = {max(s, d)} on each axis; got {op} on spatial axis {axis}"
      )
  extent = [_effective_kernel_size(k, d) for k, d in zip(kernel, dilations)]
  if isinstance(padding, str) and padding.lower() == "same":
    pads = resolve_padding("same", [n * s for n, s in zip(spatial, strides)], kernel, strides, dilations)
    out = tuple(n * s + op for n, s, op in zip(spatial, strides, ops_))
  else:
    # "valid"/"full"/"causal"/explicit pads do not depend on the input size.
    pads = resolve_padding(padding, spatial, kernel, strides, dilations)
    out = tuple(_transpose_output_size(n, e, p, s, op) for n, e, p, s, op in zip(spatial, extent, pads, strides, ops_))
  if any(o < 1 for o in out):
    raise ValueError(
      f"padding={padding!r} leaves an empty conv_transpose output {out} for input spatial shape {tuple(spatial)}"
    )
  return pads, out


# The public vocabulary of a window operation (what a kernel or a user reads); the validators
# (check_int, normalize_ints, ...) are shared with the other modules but are not part of the API.
__all__ = [
  "PADDING_MODES",
  "ConvGeometry",
  "Padding",
  "Window",
  "conv_geometry",
  "output_shape",
  "output_size",
  "resolve_padding",
]
