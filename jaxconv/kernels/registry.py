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

A kernel may also add a bias in the same call, and give its gradient with the kernel gradient
(where the library it wraps does both in one pass over the data, as oneDNN does)::

    forward_bias(x, w, b, g) -> y                 y = forward(x, w, g) + b, b (C_out,) in x's dtype
    kernel_grad_bias(x, dy, g) -> (dw, db)        db = dy summed over N and space, in x's dtype

both accumulated in at least float32. A kernel without them gets ``forward`` plus an XLA add, and
``kernel_grad`` plus an XLA reduction.

A kernel refuses what it cannot serve through ``supports(g)`` (a reason, or None). ``local``
says whether a non-finite input value stays within the outputs whose windows see it, as in
lax: transform-based kernels (FFT, Winograd, banded matrices) spread an inf or NaN further.

This module is also the one owner of ``impl`` names: :func:`check` is the one validation of an
``impl`` argument (``jaxconv.ops``, ``jaxconv.nn`` and ``jaxconv.lax_compat`` call it), and the
defaults of ``impl=None`` are named here: :data:`FUNCTION_DEFAULT` for the functional API,
:data:`LAYER_DEFAULT` for the layers, :data:`DROP_IN_DEFAULT` for ``conv_general_dilated``.
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
ForwardBias = Callable[[jax.Array, jax.Array, jax.Array, ConvGeometry], jax.Array]
KernelGradBias = Callable[[jax.Array, jax.Array, ConvGeometry], tuple[jax.Array, jax.Array]]
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
  forward_bias: ForwardBias | None = None
  kernel_grad_bias: KernelGradBias | None = None

  def refusal(self, g: ConvGeometry) -> str | None:
    """Why this kernel cannot serve ``g``, or None."""
    return None if self.supports is None else self.supports(g)


# What ``impl=None`` means: jc.conv, conv_transpose, correlate and convolve run lax (DESIGN.md);
# the layers (nn.Conv, nn.ConvTranspose, so the models) run the per-call static choice, as does
# the drop-in conv_general_dilated (its signature default).
FUNCTION_DEFAULT = "lax"
LAYER_DEFAULT = "auto"
DROP_IN_DEFAULT = "auto"

_REGISTRY: dict[str, Kernel] = {}
# Called after a kernel is replaced: caches keyed by kernel name that may hold the old functions.
_REPLACE_HOOKS: list[Callable[[], None]] = []


def register(
  name: str,
  *,
  input_grad: Forward | None = None,
  kernel_grad: Forward | None = None,
  supports: Supports | None = None,
  local: bool = True,
  dispatch: Callable[[ConvGeometry], str] | None = None,
  description: str = "",
  replace: bool = False,
  forward_bias: ForwardBias | None = None,
  kernel_grad_bias: KernelGradBias | None = None,
) -> Callable[[Forward], Forward]:
  """Decorator: register ``forward`` under ``name`` with its optional transposes and refusals.

  Args:
    name: the name ``impl=`` selects.
    input_grad: ``(dy, w, g) -> dx``, the transpose of forward in x; None derives it from forward.
    kernel_grad: ``(x, dy, g) -> dw``, the transpose of forward in w; None derives it from forward.
    supports: ``g -> reason or None``: why the kernel refuses a geometry (None: it serves all).
    local: whether a non-finite input stays within the outputs whose windows see it.
    dispatch: ``g -> name`` makes the kernel an alias chosen per call (``"auto"``); its forward
      is then never run.
    description: one line for listings; by default the first line of forward's docstring.
    replace: replace a kernel already registered under ``name``. The new functions are what
      every later call runs, eager or under an already-compiled ``jax.jit``, ``jax.grad`` and the
      layers: the caches that hold compiled programs are cleared (``jax.clear_caches()``).
    forward_bias: ``(x, w, b, g) -> forward(x, w, g) + b`` in one call; None: forward, then an add.
    kernel_grad_bias: ``(x, dy, g) -> (dw, db)``, the kernel gradient and dy summed over N and
      space, in one call; None: kernel_grad, then a reduction.

  Returns:
    The decorator, which registers its argument and returns it unchanged.

  Raises:
    TypeError: ``name`` is not a non-empty string, or ``replace`` not a bool.
    ValueError: (at decoration) ``name`` is registered already and ``replace`` is False.
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"name must be a non-empty string; got {name!r}")
  if not isinstance(replace, bool):
    raise TypeError(f"replace must be a bool; got {type(replace).__name__}: {replace!r}")

  def decorate(forward: Forward) -> Forward:
    replacing = name in _REGISTRY
    if replacing and not replace:
      raise ValueError(
        f"a kernel named {name!r} is already registered; pass replace=True to register(...) to replace it"
      )
    doc = description or (forward.__doc__ or "").strip().partition("\n")[0]
    _REGISTRY[name] = Kernel(
      name, forward, input_grad, kernel_grad, supports, local, dispatch, doc, forward_bias, kernel_grad_bias
    )
    if replacing:
      _forget_compiled()
    return forward

  return decorate


def add_replace_hook(hook: Callable[[], None]) -> None:
  """Have ``hook()`` called whenever a kernel is replaced: for a cache that holds kernels' functions by name."""
  _REPLACE_HOOKS.append(hook)


def _forget_compiled() -> None:
  """Drop every compiled program that may hold a replaced kernel's old functions.

  Primitives carry the kernel's name, not its functions, so programs traced or compiled before
  the replacement would keep running the old ones: jax's own caches (every ``jax.jit``'s
  compiled executables included) and the hooks' caches go.
  """
  for hook in _REPLACE_HOOKS:
    hook()
  jax.clear_caches()


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


def check(impl: object, *, default: str | None = FUNCTION_DEFAULT) -> str:
  """The registered kernel name ``impl`` selects, ``default`` for None: the one validation of ``impl``.

  Args:
    impl: a registered name (``available()``) or None.
    default: what None selects (``FUNCTION_DEFAULT`` or ``LAYER_DEFAULT``); with ``default=None``,
      None is refused (``conv_general_dilated``, whose signature takes a string).

  Returns:
    The kernel's name.

  Raises:
    TypeError: ``impl`` is neither a string nor None.
    ValueError: ``impl`` names no registered kernel (the message lists the available ones).
  """
  return get(default if impl is None else impl).name


def layer_default() -> str:
  """What a layer's ``impl=None`` runs: ``LAYER_DEFAULT`` where registered, else ``FUNCTION_DEFAULT``."""
  return LAYER_DEFAULT if LAYER_DEFAULT in _REGISTRY else FUNCTION_DEFAULT


def accumulation_dtype(dtype: object) -> np.dtype:
  """The dtype a kernel accumulates in: float32 for 16-bit floats, else the dtype itself."""
  np_dtype = np.dtype(cast(Any, dtype))
  return np.dtype(jnp.float32) if np_dtype.itemsize < 4 else np_dtype


__all__ = [
  "DROP_IN_DEFAULT",
  "FUNCTION_DEFAULT",
  "LAYER_DEFAULT",
  "Forward",
  "ForwardBias",
  "Kernel",
  "KernelGradBias",
  "Supports",
  "accumulation_dtype",
  "add_replace_hook",
  "available",
  "check",
  "get",
  "layer_default",
  "register",
  "resolve",
]
