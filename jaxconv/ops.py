"""The functional API of convolutions: correlate, convolve, conv, conv_transpose; validation and dispatch.

Each function validates its arguments once, in Python, on static shapes, into one
``ConvGeometry`` (``jaxconv.geometry``), before anything is traced to XLA, so bad input raises
``ValueError``/``TypeError`` naming the argument, also under ``jax.jit``. Then, in this order:
a non-zero ``padding_mode`` fills the resolved pads (``numpy.pad``'s rule) and the geometry
becomes unpadded; a call with an empty x, w or output is answered here (lax's result: an empty
array, or zeros plus the bias); everything else runs on the kernel named by ``impl`` through
``jaxconv.kernels.primitives``, which gives every kernel every JAX transform. Integer and bool
inputs are promoted to the default float dtype.

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
from jaxconv.geometry import (
  PADDING_MODES,
  Convention,
  ConvGeometry,
  Padding,
  check_allocatable,
  check_channels,
  check_int,
  check_padding_mode,
  conv_geometry,
  normalize_ints,
  transpose_output_shape,
)
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


def add_bias(y: jax.Array, b: jax.Array | None) -> jax.Array:
  """``y + b`` over the channel axis; ``b`` of shape ``(C_out,)`` or None."""
  if b is None:
    return y
  # Added in the accumulation dtype so that b's gradient (a sum over N and space) is too.
  acc = kernels.accumulation_dtype(y.dtype)
  return (y.astype(acc) + b.astype(acc)).astype(y.dtype)


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


def run_conv(x: jax.Array, w: jax.Array, g: ConvGeometry, impl: str | None, padding_mode: str = "zeros") -> jax.Array:
  """The correlation y ``(N, *out, C_out)`` of a validated call, on the kernel ``impl``."""
  name = check_impl(impl)
  x, g = fill_padding(x, g, padding_mode)
  if g.empty:
    return jnp.zeros(g.out_shape, x.dtype)
  return kernels.conv(x, w, g, name)


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
  """Cross-correlation of an unbatched single-channel signal; ``"same"`` etc. as in scipy.signal.

  x: ``(*spatial)``, w: ``(*kernel)`` of the same rank (1-3). At stride 1 and dilation 1 the
  mode strings give exactly ``scipy.signal.correlate(x, w, mode)``; a stride subsamples that.
  ``padding_mode`` fills the pads: "zeros", "reflect", "replicate", "circular", "symmetric".
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
  """Convolution (the kernel flipped on every axis) of an unbatched signal, as scipy.signal.convolve."""
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
  """Batched channels-last cross-correlation, padding strings as in ``lax.conv_general_dilated``.

  x: ``(N, *spatial, C_in)``, w: ``(*kernel, C_in // groups, C_out)``, b: ``(C_out,)`` or None
  -> ``(N, *out_spatial, C_out)``, 1-3 spatial axes. ``padding_mode`` fills the pads as
  ``numpy.pad`` does ("zeros", "reflect", "replicate", "circular", "symmetric").
  """
  xa, wa, ba = promote(x=x, w=w, b=b)
  assert xa is not None and wa is not None
  check_rank("x", xa, (3, 4, 5), "(N, *spatial, C_in) with 1-3 spatial axes")
  g = geometry_of(xa, wa, stride=stride, padding=padding, dilation=dilation, groups=groups)
  check_bias(ba, g.out_channels)
  return add_bias(run_conv(xa, wa, g, impl, padding_mode), ba)


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

  x: ``(N, *spatial, C_in)``, w: ``(*kernel, C_in // groups, C_out)`` (the same layout as for
  ``conv``), b: ``(C_out,)`` or None -> ``(N, *out_spatial, C_out)``. ``padding`` is the padding
  of the forward conv being transposed: ``out = (n - 1) * stride + d * (k - 1) + 1 - lo - hi +
  output_padding``, and ``"same"`` gives ``out = n * stride + output_padding``; ``output_padding``
  (``0 <= op < max(stride, dilation)``) adds outputs on the high side, as PyTorch's. This equals
  PyTorch's ``ConvTranspose`` with ``padding=lo=hi`` and ``lax.conv_transpose(...,
  transpose_kernel=True)`` with matching pads.
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
  """Names accepted by ``impl=`` (``None`` means ``"lax"``)."""
  return kernels.available()


__all__ = [
  "add_bias",
  "as_float_array",
  "available_impls",
  "check_bias",
  "check_impl",
  "check_rank",
  "conv",
  "conv_transpose",
  "convolve",
  "correlate",
  "geometry_of",
  "promote",
  "run_conv",
]
