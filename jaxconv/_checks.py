"""jaxconv's argument validators: the one place where an integer, a bool or a per-axis tuple is checked.

Private to the package: every error names the argument (``name``) and its value, and is raised in
Python before XLA sees the call.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

# The largest array (bytes) a geometry may ask for: beyond it, the request is a mistake (a huge
# padding, say), refused in Python rather than by the allocator after compilation.
_MAX_ARRAY_BYTES = 2**40
# The largest stride, dilation, window size or group count accepted: beyond it XLA's int64 shape
# arithmetic overflows (an OverflowError or an XLA TypeError instead of an error naming the argument).
_MAX_INT = 2**62


def is_int(value: object) -> bool:
  """True for Python and numpy integers, but not for bools: the one integer predicate of jaxconv."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
  """``value`` as an ``int`` (``TypeError`` naming ``name`` unless an integer, ``ValueError`` below ``minimum``)."""
  if not is_int(value):
    raise TypeError(f"{name} must be an int; got {type(value).__name__}: {value!r}")
  if minimum is not None and int(value) < minimum:  # type: ignore[call-overload]
    raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
  if abs(int(value)) >= _MAX_INT:  # type: ignore[call-overload]
    raise ValueError(f"{name} must be < 2**62; got {value!r}")
  return int(value)  # type: ignore[call-overload]


def check_bool(value: object, name: str) -> bool:
  """``value`` if it is a bool (numpy's included); ``TypeError`` naming ``name`` otherwise."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool; got {type(value).__name__}: {value!r}")
  return bool(value)


def normalize_ints(value: int | Sequence[int], rank: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
  """An int or a length-``rank`` sequence of ints -> a ``rank``-tuple, each >= ``minimum``."""
  if is_int(value):
    values = (int(value),) * rank  # type: ignore[arg-type]
  elif isinstance(value, Sequence) and not isinstance(value, str):
    if len(value) != rank:
      raise ValueError(f"{name} must be an int or a sequence of {rank} ints (one per spatial axis); got {value!r}")
    if not all(is_int(v) for v in value):
      raise TypeError(f"{name} must hold ints; got {value!r}")
    values = tuple(int(v) for v in value)
  else:
    raise TypeError(f"{name} must be an int or a sequence of {rank} ints; got {value!r}")
  if any(v < minimum for v in values):
    raise ValueError(f"{name} must be >= {minimum} on every axis; got {value!r}")
  if any(abs(v) >= _MAX_INT for v in values):
    raise ValueError(f"{name} must be < 2**62 on every axis; got {value!r}")
  return values


def check_allocatable(shape: Sequence[int], itemsize: int, name: str, what: str) -> None:
  """``ValueError`` naming ``name`` when an array of ``shape`` could never be allocated."""
  size = math.prod(shape) * itemsize
  if size > _MAX_ARRAY_BYTES:
    raise ValueError(
      f"{name}: the {what} {tuple(shape)} would take {size / 2**40:.1f} TiB (> {_MAX_ARRAY_BYTES // 2**40} TiB)"
    )
