"""The kernel contract, its static call description, and the name -> kernel registry.

A kernel computes one channels-last cross-correlation on already validated arguments::

    fn(x, w, *, stride, padding, dilation, groups) -> y
    x: (N, *spatial, C_in)   w: (*kernel, C_in // groups, C_out)   y: (N, *out_spatial, C_out)

``stride``/``dilation`` are tuples of ints >= 1, ``padding`` a tuple of explicit non-negative
``(lo, hi)`` pairs (one per spatial axis), ``groups`` divides both channel counts, x and w share
one floating dtype, and y has that dtype (accumulated in at least float32). Kernels must give
lax's values and gradients; a kernel that cannot serve a call says so through ``supports``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.padding import Pair, effective_kernel_size, output_size

KernelFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """Static description of one kernel call: shapes, dtype and explicit geometry."""

  x_shape: tuple[int, ...]
  w_shape: tuple[int, ...]
  dtype: np.dtype
  stride: tuple[int, ...]
  padding: tuple[Pair, ...]
  dilation: tuple[int, ...]
  groups: int

  @classmethod
  def of(cls, x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups) -> "ConvSpec":
    """The spec of a kernel call on arrays ``x`` and ``w`` (shapes are static under jit)."""
    return cls(tuple(x.shape), tuple(w.shape), np.dtype(x.dtype), tuple(stride), tuple(map(tuple, padding)), tuple(dilation), int(groups))

  @property
  def rank(self) -> int:
    """Number of spatial axes."""
    return len(self.x_shape) - 2

  @property
  def batch(self) -> int:
    return self.x_shape[0]

  @property
  def spatial(self) -> tuple[int, ...]:
    return self.x_shape[1:-1]

  @property
  def kernel(self) -> tuple[int, ...]:
    return self.w_shape[:-2]

  @property
  def in_channels(self) -> int:
    return self.x_shape[-1]

  @property
  def out_channels(self) -> int:
    return self.w_shape[-1]

  @property
  def kernel_extent(self) -> tuple[int, ...]:
    """Dilated kernel extent per axis."""
    return tuple(effective_kernel_size(k, d) for k, d in zip(self.kernel, self.dilation))

  @property
  def out_spatial(self) -> tuple[int, ...]:
    return tuple(output_size(n, k, p, s, d) for n, k, p, s, d in zip(self.spatial, self.kernel, self.padding, self.stride, self.dilation))

  @property
  def out_shape(self) -> tuple[int, ...]:
    """``(N, *out_spatial, C_out)``."""
    return (self.batch, *self.out_spatial, self.out_channels)

  @property
  def flops(self) -> int:
    """Multiply-adds x 2 of the forward pass."""
    return 2 * math.prod(self.out_shape) * math.prod(self.kernel) * (self.in_channels // self.groups)

  def kwargs(self) -> dict:
    """The keyword arguments of the kernel contract."""
    return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A registered implementation of the kernel contract."""

  name: str
  fn: KernelFn
  supports: Callable[[ConvSpec], str | None]
  description: str = ""


def supports_everything(spec: ConvSpec) -> str | None:
  """A ``supports`` that accepts every call."""
  del spec
  return None


_REGISTRY: dict[str, Kernel] = {}


def register(name: str, *, supports: Callable[[ConvSpec], str | None] = supports_everything, description: str = ""):
  """Decorator: register ``fn`` under ``name``; ``supports(spec)`` returns why a call is refused, or None."""

  def decorate(fn: KernelFn) -> KernelFn:
    if name in _REGISTRY:
      raise ValueError(f"a kernel named {name!r} is already registered")
    _REGISTRY[name] = Kernel(name, fn, supports, description or (fn.__doc__ or "").strip().partition("\n")[0])
    return fn

  return decorate


def get(name: str) -> Kernel:
  """The kernel registered under ``name``; ``ValueError`` naming ``impl`` otherwise."""
  if not isinstance(name, str):
    raise TypeError(f"impl must be a string naming a kernel, one of {available()}; got {name!r}")
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"impl={name!r} is not a registered kernel; available: {available()}") from None


def available() -> tuple[str, ...]:
  """Names of the registered kernels, in registration order."""
  return tuple(_REGISTRY)


def accumulation_dtype(dtype) -> np.dtype:
  """The dtype a kernel accumulates in: float32 for 16-bit floats, else the dtype itself."""
  dtype = np.dtype(dtype)
  return np.dtype(jnp.float32) if dtype.itemsize < 4 else dtype
