"""The kernel contract and the name -> kernel registry.

A kernel is up to three functions on validated, non-empty arguments, all static facts in one
``ConvGeometry`` ``g`` (``jaxconv.geometry``)::

    forward(x, w, g) -> y        x: (N, *spatial, C_in)  w: (*kernel, C_in // groups, C_out)
    input_grad(dy, w, g) -> dx   the transpose of forward in x: dy (N, *out_spatial, C_out) -> x's shape
    kernel_grad(x, dy, g) -> dw  the transpose of forward in w: -> w's shape

x and w share one floating dtype and y has it (accumulated in at least float32). A kernel that
gives only ``forward`` gets its transposes from JAX's own differentiation of it; one with hand-
written backward passes gives them here. Either way ``jaxconv.kernels.primitives`` turns the three
into bilinear primitives whose derivatives and batching rules call each other, so every
registered kernel works under jit, grad of any order, vjp, jvp, jacfwd, jacrev, hessian and vmap.

A kernel refuses what it cannot serve through ``supports(g)`` (a reason, or None). ``local``
says whether a non-finite input value stays within the outputs whose windows see it, as in
lax: transform-based kernels (FFT, Winograd, banded matrices) spread an inf or NaN further.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.geometry import ConvGeometry

Forward = Callable[[jax.Array, jax.Array, ConvGeometry], jax.Array]
Supports = Callable[[ConvGeometry], "str | None"]


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A registered implementation of the kernel contract."""

  name: str
  forward: Forward
  input_grad: Forward | None = None
  kernel_grad: Forward | None = None
  supports: Supports | None = None
  local: bool = True
  dispatch: Callable[[ConvGeometry], str] | None = None
  description: str = ""

  def refusal(self, g: ConvGeometry) -> str | None:
    """Why this kernel cannot serve ``g``, or None."""
    return None if self.supports is None else self.supports(g)


_REGISTRY: dict[str, Kernel] = {}


def register(
  name: str,
  *,
  input_grad: Forward | None = None,
  kernel_grad: Forward | None = None,
  supports: Supports | None = None,
  local: bool = True,
  dispatch: Callable[[ConvGeometry], str] | None = None,
  description: str = "",
) -> Callable[[Forward], Forward]:
  """Decorator: register ``forward`` under ``name`` with its optional transposes and refusals.

  ``dispatch(g) -> name`` makes a kernel an alias chosen per call (``"auto"``); its forward is
  then never run.
  """

  def decorate(forward: Forward) -> Forward:
    if name in _REGISTRY:
      raise ValueError(f"a kernel named {name!r} is already registered")
    doc = description or (forward.__doc__ or "").strip().partition("\n")[0]
    _REGISTRY[name] = Kernel(name, forward, input_grad, kernel_grad, supports, local, dispatch, doc)
    return forward

  return decorate


def available() -> tuple[str, ...]:
  """Names of the registered kernels, in registration order."""
  return tuple(_REGISTRY)


def get(name: object) -> Kernel:
  """The kernel registered under ``name``; ``TypeError``/``ValueError`` naming ``impl`` otherwise."""
  if not isinstance(name, str):
    raise TypeError(f"impl must be a string naming a kernel, one of {available()}; got {name!r}")
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"impl={name!r} is not a registered kernel; available: {available()}") from None


def resolve(name: str, g: ConvGeometry) -> Kernel:
  """The kernel that runs ``g`` for ``impl=name``: aliases dispatched, refusals raised naming ``impl``."""
  kernel = get(name)
  if kernel.dispatch is not None:
    kernel = get(kernel.dispatch(g))
  reason = kernel.refusal(g)
  if reason is not None:
    shown = name if name == kernel.name else f"{name} (-> {kernel.name})"
    raise ValueError(f"impl={shown!r} does not support this call: {reason}")
  return kernel


def accumulation_dtype(dtype: object) -> np.dtype:
  """The dtype a kernel accumulates in: float32 for 16-bit floats, else the dtype itself."""
  np_dtype = np.dtype(cast(Any, dtype))
  return np.dtype(jnp.float32) if np_dtype.itemsize < 4 else np_dtype


__all__ = ["Forward", "Kernel", "Supports", "accumulation_dtype", "available", "get", "register", "resolve"]
