"""Padding, stride and dilation specs -> explicit ``(lo, hi)`` pairs; output sizes.

Two conventions for the padding *strings* (explicit ints and pairs mean the same in both):

=========  ==============================  ==========================================
mode       ``"scipy"`` (correlate/convolve)  ``"lax"`` (conv, pooling)
=========  ==============================  ==========================================
valid      ``(0, 0)``                       ``(0, 0)``
same       ``(k_eff // 2, (k_eff - 1) // 2)``; ``total = max((ceil(n/s) - 1) s + k_eff - n, 0)``,
           the output is ``ceil(n / s)``      ``(total // 2, total - total // 2)``
full       ``(k_eff - 1, k_eff - 1)``        ``(k_eff - 1, k_eff - 1)``
=========  ==============================  ==========================================

``k_eff = d * (k - 1) + 1`` is the dilated kernel extent. For an even kernel the two "same"
rules put the extra pad on opposite sides: scipy on the low side (its output is the centre of
the "full" result), lax on the high side. At stride 1 both keep ``n`` outputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal, Union

Pair = tuple[int, int]
Padding = Union[str, int, Sequence[int], Sequence[Sequence[int]]]
Convention = Literal["scipy", "lax"]

PADDING_MODES = ("valid", "same", "full")


def _is_int(v: object) -> bool:
  """True for Python/numpy integers, but not for bools."""
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def normalize_ints(value: int | Sequence[int], rank: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
  """An int or a length-``rank`` sequence of ints -> a ``rank``-tuple, each >= ``minimum``."""
  if _is_int(value):
    values = (int(value),) * rank
  elif isinstance(value, Sequence) and not isinstance(value, str):
    if len(value) != rank:
      raise ValueError(f"{name} must be an int or a sequence of {rank} ints (one per spatial axis); got {value!r}")
    if not all(_is_int(v) for v in value):
      raise TypeError(f"{name} must hold ints; got {value!r}")
    values = tuple(int(v) for v in value)
  else:
    raise TypeError(f"{name} must be an int or a sequence of {rank} ints; got {value!r}")
  if any(v < minimum for v in values):
    raise ValueError(f"{name} must be >= {minimum} on every axis; got {value!r}")
  return values


def effective_kernel_size(k: int, d: int) -> int:
  """Extent of a ``k``-tap kernel with ``d - 1`` zeros between taps."""
  return d * (k - 1) + 1


def _string_pads(mode: str, n: int, k_eff: int, s: int, convention: Convention) -> Pair:
  """One axis's pads for a padding mode string."""
  if mode == "valid":
    return (0, 0)
  if mode == "full":
    return (k_eff - 1, k_eff - 1)
  # "same"
  if convention == "scipy":
    return (k_eff // 2, (k_eff - 1) // 2)
  out = -(-n // s)
  total = max((out - 1) * s + k_eff - n, 0)
  return (total // 2, total - total // 2)


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
    if mode not in PADDING_MODES:
      raise ValueError(f"padding must be one of {PADDING_MODES}, an int, ints or (lo, hi) pairs; got {padding!r}")
    return tuple(
        _string_pads(mode, n, effective_kernel_size(k, d), s, convention)
        for n, k, s, d in zip(spatial, kernel, strides, dilations)
    )
  if _is_int(padding):
    pairs = ((int(padding), int(padding)),) * rank
  elif isinstance(padding, Sequence) and len(padding) == rank:
    if all(_is_int(p) for p in padding):
      pairs = tuple((int(p), int(p)) for p in padding)
    elif all(isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 and all(_is_int(v) for v in p) for p in padding):
      pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
    else:
      raise ValueError(f"padding must be {rank} ints or {rank} (lo, hi) int pairs; got {padding!r}")
  elif isinstance(padding, Sequence):
    raise ValueError(f"padding must have one entry per spatial axis ({rank}); got {len(padding)}: {padding!r}")
  else:
    raise TypeError(f"padding must be a string, an int or a sequence; got {type(padding).__name__}: {padding!r}")
  if any(v < 0 for pair in pairs for v in pair):
    raise ValueError(f"padding must be non-negative; got {padding!r}")
  return pairs


def output_size(n: int, k: int, pads: Pair, s: int = 1, d: int = 1) -> int:
  """One axis: ``floor((n + lo + hi - d*(k-1) - 1) / s) + 1``."""
  return (n + pads[0] + pads[1] - effective_kernel_size(k, d)) // s + 1


def output_shape(
    spatial: int | Sequence[int],
    kernel: int | Sequence[int],
    padding: Padding = "valid",
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> tuple[int, ...]:
  """Output spatial shape of a convolution or pooling window, computed without running it.

  ``spatial`` is an int (one axis) or a sequence; ``kernel`` an int (every axis) or a sequence.
  """
  if _is_int(spatial):
    spatial = (spatial,)
  if not isinstance(spatial, Sequence) or isinstance(spatial, str):
    raise TypeError(f"spatial must be an int or a sequence of ints; got {spatial!r}")
  spatial = normalize_ints(tuple(spatial), len(spatial), "spatial", minimum=0)
  kernel = normalize_ints(kernel, len(spatial), "kernel")
  pairs = resolve_padding(padding, spatial, kernel, stride, dilation)
  strides = normalize_ints(stride, len(spatial), "stride")
  dilations = normalize_ints(dilation, len(spatial), "dilation")
  check_fits(spatial, kernel, pairs, dilations, name="kernel")
  return tuple(output_size(n, k, p, s, d) for n, k, p, s, d in zip(spatial, kernel, pairs, strides, dilations))


def check_fits(spatial: Sequence[int], kernel: Sequence[int], pairs: Sequence[Pair], dilation: Sequence[int], name: str = "w") -> None:
  """Raise ``ValueError`` when the dilated kernel is larger than the padded input on some axis."""
  for axis, (n, k, (lo, hi), d) in enumerate(zip(spatial, kernel, pairs, dilation)):
    k_eff = effective_kernel_size(k, d)
    if n + lo + hi < k_eff:
      raise ValueError(
          f"{name}: kernel extent {k_eff} (size {k}, dilation {d}) is larger than the padded input "
          f"{n} + {lo} + {hi} = {n + lo + hi} on spatial axis {axis}"
      )


def ceil_div(a: int, b: int) -> int:
  """``ceil(a / b)`` for ints."""
  return -(-a // b)


__all__ = [
    "Padding",
    "Pair",
    "PADDING_MODES",
    "ceil_div",
    "check_fits",
    "effective_kernel_size",
    "normalize_ints",
    "output_shape",
    "output_size",
    "resolve_padding",
]
