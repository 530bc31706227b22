"""The functional API of convolutions: correlate, convolve, conv, conv_transpose; validation and dispatch.

Each function validates its arguments once, in Python, on static shapes, into one
``ConvGeometry`` (``jaxconv.geometry``), before anything is traced to XLA, so bad input raises
``ValueError``/``TypeError`` naming the argument, also under ``jax.jit``. Then, in this order:
a non-zero ``padding_mode`` fills the resolved pads (``numpy.pad``'s rule) and the geometry
becomes unpadded; a call with an empty x, w or output is answered here (lax's result: an empty
array, or zeros plus the bias); everything else runs on the kernel named by ``impl`` through
``jaxconv.kernels.primitives``, which gives every kernel every JAX transform. Integer and bool
inputs are promoted to the default float dtype.

>>> import numpy as np
>>> import jaxconv as jc
>>> jc.correlate([1.0, 2.0, 3.0], [1.0, 1.0]).tolist()
[3.0, 5.0]
>>> jc.conv(np.ones((1, 5, 1)), np.ones((3, 1, 1)), padding="same", padding_mode="reflect")[0, :, 0].tolist()
[3.0, 3.0, 3.0, 3.0, 3.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxconv import kernels
from jaxconv._checks import check_allocatable, check_int, normalize_ints
from jaxconv.geometry import (
  PADDING_MODES,
  Convention,
  ConvGeometry,
  Padding,
  check_channels,
  check_padding_mode,
  conv_geometry,
  transpose_output_shape,
)
from jaxconv.kernels.primitives import add_bias, conv_bias
from jaxconv.kernels.taps import swap_channels

# --------------------------------------------------------------------------------------------
# validation


def as_float_array(name: str, value: object) -> jax.Array:
  """``value`` as a JAX array of a real floating dtype; ints and bools are promoted."""
  if value is None:
    raise TypeError(f"{name} must be an array of numbers; got None")
  try:
    array = jnp.asarray(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be an array of numbers; got {type(value).__name__}: {e}") from None
  dtype = array.dtype
  if jnp.issubdtype(dtype, jnp.complexfloating):
    raise TypeError(f"{name} must be real; complex dtype {dtype} is not supported")
  if not jnp.issubdtype(dtype, jnp.floating):
    if not (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
      raise TypeError(f"{name} must have a numeric dtype; got {dtype}")
    array = array.astype(jnp.result_type(float))
  return array


def promote(**arrays: object) -> list[jax.Array | None]:
  """Arrays (by argument name; None only for ``b``) -> floating arrays of one common dtype."""
  floats = {k: as_float_array(k, v) for k, v in arrays.items() if v is not None or k != "b"}
  dtype = jnp.result_type(*floats.values())
  return [floats[k].astype(dtype) if k in floats else None for k in arrays]


def check_rank(name: str, array: jax.Array, ranks: Sequence[int], what: str) -> None:
  """Raise ``ValueError`` unless ``array.ndim`` is one of ``ranks``."""
  if array.ndim not in ranks:
    raise ValueError(f"{name} must be {what} (ndim in {tuple(ranks)}); got shape {tuple(array.shape)}")


def check_bias(b: jax.Array | None, c_out: int) -> None:
  """Raise unless ``b`` is None or of shape ``(C_out,)``."""
  if b is not None and b.shape != (c_out,):
    raise ValueError(f"b must have shape (C_out,) = ({c_out},); got {tuple(b.shape)}")


def check_impl(impl: object) -> str:
  """The kernel name ``impl`` selects (None: ``kernels.FUNCTION_DEFAULT``, "lax"), checked by ``kernels.check``."""
  return kernels.check(impl, default=kernels.FUNCTION_DEFAULT)


def geometry_of(
  x: jax.Array, w: jax.Array, *, stride, padding, dilation, groups, convention: Convention = "lax"
) -> ConvGeometry:
  """The validated geometry of a channels-last call on x ``(N, *spatial, C_in)`` and w."""
  return conv_geometry(
    x.shape, w.shape, x.dtype, stride=stride, padding=padding, dilation=dilation, groups=groups, convention=convention
  )


# --------------------------------------------------------------------------------------------
# dispatch


def fill_padding(x: jax.Array, g: ConvGeometry, padding_mode: str) -> tuple[jax.Array, ConvGeometry]:
  """x with ``g``'s pads filled as ``padding_mode`` says, and the same conv without pads.

  "zeros" is left to the kernels (they pad for free); the other modes pad here as ``numpy.pad``
  with mode constant/reflect/edge/wrap/symmetric does.
  """
  check_padding_mode(padding_mode, g.spatial, g.padding)
  if padding_mode == "zeros" or not any(lo or hi for lo, hi in g.padding):
    return x, g
  xp = jnp.pad(x, ((0, 0), *g.padding, (0, 0)), mode=PADDING_MODES[padding_mode])
  return xp, dataclasses.replace(g, spatial=g.padded, padding=((0, 0),) * g.rank)


def run_conv(
  x: jax.Array, w: jax.Array, g: ConvGeometry, impl: str | None, padding_mode: str = "zeros", b: jax.Array | None = None
) -> jax.Array:
  """The correlation y ``(N, *out, C_out)`` of a validated call plus the bias ``b`` (or None), on kernel ``impl``."""
  name = check_impl(impl)
  x, g = fill_padding(x, g, padding_mode)
  if g.empty:
    return add_bias(jnp.zeros(g.out_shape, x.dtype), b)
  return conv_bias(x, w, b, g, name)


# --------------------------------------------------------------------------------------------
# signal-style: unbatched, single channel


def correlate(
  x: object,
  w: object,
  padding: Padding = "valid",
  stride: int | Sequence[int] = 1,
  dilation: int | Sequence[int] = 1,
  *,
  padding_mode: str = "zeros",
  impl: str | None = None,
) -> jax.Array:
  """Cross-correlation of an unbatched, single-channel signal, as ``scipy.signal.correlate``.

  At stride 1 and dilation 1 the mode strings give exactly ``scipy.signal.correlate(x, w, mode)``
  (an even kernel's extra "same" pad goes on the low side); a stride samples that result:
  ``correlate(x, w, p, stride=s) == correlate(x, w, p)[::s]`` on every axis.

  Args:
    x: the signal, shape ``(*spatial)`` with 1-3 axes; ints and bools are promoted to float.
    w: the kernel, shape ``(*kernel)``, the same rank as ``x``.
    padding: ``"valid"``, ``"same"``, ``"full"``, ``"causal"`` (one axis only), an int (both sides
      of every axis), one int per axis, or one ``(lo, hi)`` pair per axis.
    stride: an int or one int per axis, at least 1.
    dilation: an int or one int per axis, at least 1: ``d - 1`` zeros between the kernel's taps.
    padding_mode: what fills the pads: ``"zeros"``, ``"reflect"``, ``"replicate"``,
      ``"circular"`` or ``"symmetric"`` (``numpy.pad``'s constant, reflect, edge, wrap, symmetric).
    impl: the kernel that computes it, a name from ``available_impls()``; None: the default.

  Returns:
    The correlation, shape ``(*out_spatial)`` with ``out = floor((n + lo + hi - k_eff) / s) + 1``
    per axis (``jaxconv.output_shape``), in the promoted float dtype of ``x`` and ``w``.

  Raises:
    ValueError: a bad ``padding``, ``stride``, ``dilation``, ``padding_mode`` or ``impl``, ranks
      that differ or are outside 1-3, or a kernel larger than the padded input; the message names
      the argument.
    TypeError: an argument of the wrong type (a complex array, a float stride).

  Example:
    >>> import jaxconv as jc
    >>> jc.correlate([1.0, 2.0, 3.0, 4.0], [1.0, -1.0]).tolist()
    [-1.0, -1.0, -1.0]
  """
  xa, wa = promote(x=x, w=w)
  assert xa is not None and wa is not None
  check_rank("x", xa, (1, 2, 3), "a 1-3 D signal")
  if wa.ndim != xa.ndim:
    raise ValueError(f"w must have the same rank as x ({xa.ndim}); got shape {tuple(wa.shape)}")
  xb, wb = xa[None, ..., None], wa[..., None, None]
  g = geometry_of(xb, wb, stride=stride, padding=padding, dilation=dilation, groups=1, convention="scipy")
  return run_conv(xb, wb, g, impl, padding_mode)[0, ..., 0]


def convolve(
  x: object,
  w: object,
  padding: Padding = "valid",
  stride: int | Sequence[int] = 1,
  dilation: int | Sequence[int] = 1,
  *,
  padding_mode: str = "zeros",
  impl: str | None = None,
) -> jax.Array:
  """Convolution of an unbatched, single-channel signal, as ``scipy.signal.convolve``.

  The kernel is flipped on every axis, then correlated: ``convolve(x, w, ...) ==
  correlate(x, flip(w), ...)``. The arguments are those of ``correlate``.

  Args:
    x: the signal, shape ``(*spatial)`` with 1-3 axes.
    w: the kernel, shape ``(*kernel)``, the same rank as ``x``.
    padding: as for ``correlate`` (``"valid"``, ``"same"``, ``"full"``, ints or pairs).
    stride: an int or one int per axis, at least 1.
    dilation: an int or one int per axis, at least 1.
    padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"``, ``"circular"`` or ``"symmetric"``.
    impl: a name from ``available_impls()``; None: the default.

  Returns:
    The convolution, shape ``(*out_spatial)`` as for ``correlate``.

  Raises:
    ValueError: as ``correlate``, naming the argument.
    TypeError: as ``correlate``.

  Example:
    >>> import jaxconv as jc
    >>> jc.convolve([1.0, 2.0, 3.0], [1.0, 0.0], "full").tolist()
    [1.0, 2.0, 3.0, 0.0]
  """
  xa, wa = promote(x=x, w=w)
  assert wa is not None
  return correlate(xa, jnp.flip(wa), padding, stride, dilation, padding_mode=padding_mode, impl=impl)


# --------------------------------------------------------------------------------------------
# layer-style: batched, channels-last


def conv(
  x: object,
  w: object,
  b: object = None,
  *,
  stride: int | Sequence[int] = 1,
  padding: Padding = "valid",
  dilation: int | Sequence[int] = 1,
  groups: int = 1,
  padding_mode: str = "zeros",
  impl: str | None = None,
) -> jax.Array:
  """Batched, channels-last cross-correlation (a conv layer), with ``lax.conv_general_dilated``'s padding.

  Args:
    x: the input, shape ``(N, *spatial, C_in)`` with 1-3 spatial axes.
    w: the kernel, shape ``(*kernel, C_in // groups, C_out)``.
    b: the bias, shape ``(C_out,)``, or None.
    stride: an int or one int per spatial axis, at least 1.
    padding: ``"valid"``, ``"same"`` (lax's: the extra pad on the high side, ``ceil(n / s)``
      outputs), ``"full"``, ``"causal"`` (one spatial axis), an int, one int per axis, or one
      ``(lo, hi)`` pair per axis.
    dilation: an int or one int per spatial axis, at least 1.
    groups: splits the channels into ``groups`` independent convolutions; divides ``C_in`` and
      ``C_out``.
    padding_mode: what fills the pads: ``"zeros"``, ``"reflect"``, ``"replicate"``,
      ``"circular"`` or ``"symmetric"`` (as ``numpy.pad``).
    impl: the kernel that computes it, a name from ``available_impls()``; None: the default.

  Returns:
    ``(N, *out_spatial, C_out)``, with ``out = floor((n + lo + hi - k_eff) / s) + 1`` per axis,
    in the promoted float dtype of the inputs (bfloat16 in, bfloat16 out).

  Raises:
    ValueError: a bad ``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode`` or
      ``impl``, a channel or group mismatch, a bias of the wrong shape, a wrong rank, or a kernel
      larger than the padded input; the message names the argument. A kernel that cannot serve
      the call (``impl``) says why.
    TypeError: an argument of the wrong type.

  Example:
    >>> import numpy as np
    >>> import jaxconv as jc
    >>> jc.conv(np.ones((2, 8, 8, 3)), np.ones((3, 3, 3, 4)), padding="same").shape
    (2, 8, 8, 4)
  """
  xa, wa, ba = promote(x=x, w=w, b=b)
  assert xa is not None and wa is not None
  check_rank("x", xa, (3, 4, 5), "(N, *spatial, C_in) with 1-3 spatial axes")
  g = geometry_of(xa, wa, stride=stride, padding=padding, dilation=dilation, groups=groups)
  check_bias(ba, g.out_channels)
  return run_conv(xa, wa, g, impl, padding_mode, ba)


def transpose_geometry(
  x: jax.Array | jax.ShapeDtypeStruct,
  w: jax.Array | jax.ShapeDtypeStruct,
  *,
  stride: int | Sequence[int],
  padding: Padding,
  dilation: int | Sequence[int],
  groups: int,
  output_padding: int | Sequence[int],
) -> tuple[ConvGeometry, int]:
  """The forward conv (C_out -> C_in) that ``conv_transpose`` transposes, and how many outputs of it x covers.

  Each axis gives ``(n - 1) * s + k_eff - lo - hi + op`` outputs (``"same"``: ``n * s + op``).
  """
  rank = x.ndim - 2
  kernel = tuple(w.shape[:rank])
  check_channels(x.shape, w.shape, groups)
  pads, out = transpose_output_shape(x.shape[1:-1], kernel, padding, stride, dilation, output_padding)
  # The output grows with the stride (and the dilation): name what makes it unallocatable.
  strides, dilations = normalize_ints(stride, rank, "stride"), normalize_ints(dilation, rank, "dilation")
  extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
  grown = "stride" if max((n - 1) * s for n, s in zip(x.shape[1:-1], strides)) >= max(extent) else "dilation"
  check_allocatable((x.shape[0], *out, w.shape[-1]), x.dtype.itemsize, grown, "conv_transpose output")
  w_fwd_shape = (*kernel, w.shape[-1] // groups, x.shape[-1])
  g = conv_geometry(
    (x.shape[0], *out, w.shape[-1]), w_fwd_shape, x.dtype, stride=stride, padding=pads, dilation=dilation, groups=groups
  )
  return g, groups


def conv_transpose(
  x: object,
  w: object,
  b: object = None,
  *,
  stride: int | Sequence[int] = 1,
  padding: Padding = "valid",
  dilation: int | Sequence[int] = 1,
  groups: int = 1,
  output_padding: int | Sequence[int] = 0,
  padding_mode: str = "zeros",
  impl: str | None = None,
) -> jax.Array:
  """The transpose (input gradient) of ``conv``: "deconvolution", upsampling by ``stride``.

  ``padding`` is the padding of the forward conv being transposed, so each axis gives
  ``(n - 1) * stride + k_eff - lo - hi + output_padding`` outputs (``"same"``:
  ``n * stride + output_padding``). It equals PyTorch's ``ConvTranspose`` with ``padding = lo = hi``,
  and ``lax.conv_transpose(..., transpose_kernel=True)`` with matching pads.

  Args:
    x: the input, shape ``(N, *spatial, C_in)`` with 1-3 spatial axes.
    w: the kernel, shape ``(*kernel, C_in // groups, C_out)`` (the layout of ``conv``'s).
    b: the bias, shape ``(C_out,)``, or None.
    stride: an int or one int per spatial axis, at least 1: the upsampling factor.
    padding: the forward conv's padding (``"valid"``, ``"same"``, ``"full"``, ints or pairs).
    dilation: an int or one int per spatial axis, at least 1.
    groups: the number of channel groups; divides ``C_in`` and ``C_out``.
    output_padding: an int or one per spatial axis, ``0 <= op < max(stride, dilation)``: outputs
      added on the high side (PyTorch's ``output_padding``).
    padding_mode: ``"zeros"`` only (the pads crop the output).
    impl: a name from ``available_impls()``; None: the default.

  Returns:
    ``(N, *out_spatial, C_out)`` as above.

  Raises:
    ValueError: a bad ``stride``, ``padding``, ``dilation``, ``groups``, ``output_padding``,
      ``padding_mode`` or ``impl``, or mismatched channels; the message names the argument.
    TypeError: an argument of the wrong type.

  Example:
    >>> import numpy as np
    >>> import jaxconv as jc
    >>> jc.conv_transpose(np.ones((1, 4, 4, 2)), np.ones((4, 4, 2, 3)), stride=2, padding=1).shape
    (1, 8, 8, 3)
  """
  xa, wa, ba = promote(x=x, w=w, b=b)
  assert xa is not None and wa is not None
  check_rank("x", xa, (3, 4, 5), "(N, *spatial, C_in) with 1-3 spatial axes")
  if padding_mode != "zeros":
    raise ValueError(
      f"padding_mode must be 'zeros' for conv_transpose (its pads crop the output); got {padding_mode!r}"
    )
  groups = check_int(groups, "groups", minimum=1)
  g, groups = transpose_geometry(
    xa, wa, stride=stride, padding=padding, dilation=dilation, groups=groups, output_padding=output_padding
  )
  check_bias(ba, g.in_channels)
  name = check_impl(impl)
  covered = g.out_spatial  # x's spatial shape, plus what output_padding >= stride adds
  if covered != tuple(xa.shape[1:-1]):
    xa = jnp.pad(xa, ((0, 0), *((0, c - n) for c, n in zip(covered, xa.shape[1:-1])), (0, 0)))
  if g.empty:
    y = jnp.zeros(g.x_shape, xa.dtype)
  else:
    # The forward conv being transposed maps C_out -> C_in: its kernel is w with each group's axes swapped.
    y = kernels.conv_input_grad(xa, swap_channels(wa, groups), g, name)
  return add_bias(y, ba)


# --------------------------------------------------------------------------------------------
# introspection


def available_impls() -> tuple[str, ...]:
  """The kernel names accepted by ``impl=``, in registration order.

  Returns:
    A tuple of names, at least ``"lax"`` and ``"patches"``; ``"auto"`` picks one of the others
    from static shapes. Kernels registered later (``jaxconv.kernels.register``) are included.

  Example:
    >>> import jaxconv as jc
    >>> "lax" in jc.available_impls()
    True
  """
  return kernels.available()


# The public functions (jaxconv re-exports them); the validators and dispatch helpers are module-internal.
__all__ = [
  "available_impls",
  "conv",
  "conv_transpose",
  "convolve",
  "correlate",
]
