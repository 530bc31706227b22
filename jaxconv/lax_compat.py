"""``conv_general_dilated``: ``jax.lax.conv_general_dilated``'s signature and semantics on jaxconv's kernels.

A drop-in for code that calls lax's convolution, Flax's ``nnx.Conv`` and ``linen.Conv`` among them::

    nnx.Conv(1, 32, (3, 3), conv_general_dilated=jaxconv.conv_general_dilated, rngs=rngs)
    functools.partial(jaxconv.conv_general_dilated, impl="im2col")   # one kernel by name

The call is validated, its layout (any ``dimension_numbers``) transposed to jaxconv's channels-last
x ``(N, *S, C)`` / w ``(*K, I, O)``, and run by ``jaxconv.conv``; the output is transposed to the
requested output layout. On that path:

- ``padding`` strings resolve with lax's own rule (``lax.padtype_to_pads``, so ``"SAME_LOWER"``
  too); negative pads crop, exactly as in lax.
- ``lhs_dilation`` (transposed convolution) inserts its zeros with ``lax.pad``'s interior padding,
  which also does the cropping; the kernel then runs an ordinary convolution.
- ``preferred_element_type`` wider than the inputs' float dtype casts the inputs up first: every
  product of the narrow inputs is exact in the wide type, so this is lax's accumulation in it.

What none of jaxconv's kernels serves goes to ``jax.lax.conv_general_dilated`` itself, unchanged:
``batch_group_count > 1``; non-floating dtypes (lax convolves ints, bools and complex numbers);
0 or more than 3 spatial axes; an explicit ``precision`` (jaxconv's kernels run at the default
matmul precision, the one ``jax.default_matmul_precision`` sets, as lax does for ``precision=None``;
an explicit one goes to lax so that it is honoured exactly); an ``out_sharding``; and a call the
chosen kernel refuses (its ``supports`` rule). An output, input or kernel with no elements gives
lax's result directly: zeros of lax's output shape (empty, or zeros when ``C_in = 0``).

Errors are raised before any tracing reaches XLA, with lax's exception kinds (``TypeError``,
``ValueError``, and ``RuntimeError`` for an unknown padding string, as ``lax.padtype_to_pads``
raises) and messages naming the argument; whatever these checks let through is checked by lax's
own shape and dtype rules (``jax.eval_shape`` of the lax call), so the two accept the same calls.
One deliberate difference: a non-array ``lhs``/``rhs`` (a list) raises ``TypeError`` here, where
lax fails with ``AttributeError``.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import kernels
from jaxconv.ops import conv

__all__ = ["conv_general_dilated"]

LAX_PADDING_MODES = ("VALID", "SAME", "SAME_LOWER")

Pairs = tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------------------------
# argument checks, each raising the exception kind lax raises for the same mistake


def _is_int(v: object) -> bool:
  """True for Python/numpy integers (bools included: lax accepts ``True`` as 1)."""
  return isinstance(v, numbers.Integral)


def _check_array(name: str, value) -> jax.Array:
  """``value`` as a JAX array; ``TypeError`` naming ``name`` for what has no shape and dtype."""
  if not (hasattr(value, "shape") and hasattr(value, "dtype")):
    raise TypeError(
      f"{name} must be an array (with .shape and .dtype), as for lax.conv_general_dilated; got {type(value).__name__}"
    )
  return jnp.asarray(value)


def _check_ints(name: str, value, rank: int, *, minimum: int, below_error: type[Exception]) -> tuple[int, ...]:
  """A length-``rank`` sequence of ints >= ``minimum``; lax's kinds: TypeError for form, ValueError for length."""
  if isinstance(value, np.ndarray) and value.ndim == 1:  # lax takes numpy int vectors too
    value = value.tolist()
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
    raise TypeError(f"{name} must be a sequence of {rank} ints (one per spatial axis); got {value!r}")
  if not all(_is_int(v) for v in value):
    raise TypeError(f"{name} must hold ints; got {value!r}")
  if len(value) != rank:
    raise ValueError(f"{name} must have one entry per spatial axis ({rank}); got {len(value)}: {value!r}")
  if any(v < minimum for v in value):
    raise below_error(f"{name} must be >= {minimum} on every axis; got {value!r}")
  return tuple(int(v) for v in value)


def _check_dilation(name: str, value, rank: int) -> tuple[int, ...]:
  """``None`` (all ones) or ``rank`` ints >= 1 (lax: ``TypeError`` "All dilations must be positive")."""
  if value is None:
    return (1,) * rank
  return _check_ints(name, value, rank, minimum=1, below_error=TypeError)


def _check_padding(padding, rank: int, lhs_dilation: tuple[int, ...]) -> str | Pairs:
  """An upper-case mode string or ``rank`` explicit ``(lo, hi)`` int pairs (negative allowed)."""
  if isinstance(padding, str):
    if any(d != 1 for d in lhs_dilation):
      raise ValueError(
        f"padding={padding!r}: a padding string is not defined with lhs_dilation={lhs_dilation} (a transposed "
        "convolution), as in lax.conv_general_dilated; give explicit (lo, hi) pairs"
      )
    if padding.upper() not in LAX_PADDING_MODES:
      # lax.padtype_to_pads raises RuntimeError for an unknown mode; so do we, for the same call.
      raise RuntimeError(f"padding must be one of {LAX_PADDING_MODES} or {rank} (lo, hi) pairs; got {padding!r}")
    return padding.upper()
  try:
    pairs = tuple((operator.index(lo), operator.index(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    raise ValueError(
      f"padding must be one of {LAX_PADDING_MODES} or a sequence of (lo, hi) int pairs; got {padding!r}"
    ) from None
  if len(pairs) != rank:
    raise TypeError(f"padding must have one (lo, hi) pair per spatial axis ({rank}); got {len(pairs)}: {padding!r}")
  return pairs


def _check_group_count(name: str, value) -> None:
  """``value`` >= 1 when it is an int; other types are left to lax, which accepts e.g. ``2.0``."""
  if _is_int(value) and value < 1:
    raise ValueError(f"{name} must be a positive integer; got {value!r}")


# --------------------------------------------------------------------------------------------
# layouts


def _to_channels_last(lhs: jax.Array, rhs: jax.Array, dnums: lax.ConvDimensionNumbers) -> tuple[jax.Array, jax.Array]:
  """lhs, rhs in any layout -> x ``(N, *S, C)``, w ``(*K, I, O)``, spatial axes in rhs_spec's order.

  lax pairs ``window_strides[i]``, the pads and the dilations with the i-th spatial axis of
  ``rhs_spec``; ``lhs_spec``/``out_spec`` list their spatial axes in that same order.
  """
  (lhs_n, lhs_c, *lhs_s), (rhs_o, rhs_i, *rhs_s) = dnums.lhs_spec, dnums.rhs_spec
  return jnp.transpose(lhs, (lhs_n, *lhs_s, lhs_c)), jnp.transpose(rhs, (*rhs_s, rhs_i, rhs_o))


def _from_channels_last(y: jax.Array, dnums: lax.ConvDimensionNumbers) -> jax.Array:
  """y ``(N, *S, O)`` -> the layout of ``out_spec`` (``out_spec[k]`` is where canonical axis k goes)."""
  rank = y.ndim - 2
  canonical = (0, rank + 1, *range(1, rank + 1))  # y's axes in (N, C, *S) order
  perm = [0] * y.ndim
  for k, axis in enumerate(dnums.out_spec):
    perm[axis] = canonical[k]
  return jnp.transpose(y, perm)


# --------------------------------------------------------------------------------------------
# the entry point


def _lax_call(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation,
  rhs_dilation,
  dimension_numbers,
  feature_group_count,
  batch_group_count,
  precision,
  preferred_element_type,
  out_sharding,
) -> jax.Array:
  """The same call to ``jax.lax.conv_general_dilated`` (``out_sharding`` only when given)."""
  extra = {} if out_sharding is None else {"out_sharding": out_sharding}
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
    **extra,
  )


def _explicit_pads(padding: str | Pairs, x: jax.Array, w: jax.Array, strides, rhs_dilation) -> Pairs:
  """lax's ``(lo, hi)`` pairs for channels-last x and w; strings by lax's own rule."""
  if not isinstance(padding, str):
    return padding
  extent = [d * (k - 1) + 1 for k, d in zip(w.shape[:-2], rhs_dilation)]
  return tuple((int(lo), int(hi)) for lo, hi in lax.padtype_to_pads(x.shape[1:-1], extent, strides, padding))


def _dilate_and_crop(x: jax.Array, pads: Pairs, lhs_dilation: tuple[int, ...]) -> tuple[jax.Array, Pairs]:
  """Apply lhs_dilation (zeros between input cells) and the negative pads to x ``(N, *S, C)``.

  Returns the new x and the remaining non-negative pads, which the kernel applies. lax.pad
  interleaves first and then pads or (when negative) crops, the order lax's convolution uses.
  """
  if all(d == 1 for d in lhs_dilation) and all(v >= 0 for pair in pads for v in pair):
    return x, pads
  config = [(0, 0, 0), *((min(lo, 0), min(hi, 0), d - 1) for (lo, hi), d in zip(pads, lhs_dilation)), (0, 0, 0)]
  x = lax.pad(x, np.zeros((), x.dtype), config)
  return x, tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
  out_sharding=None,
  *,
  impl: str = kernels.DROP_IN_DEFAULT,
) -> jax.Array:
  """``jax.lax.conv_general_dilated`` computed by jaxconv's kernel ``impl`` (see the module docstring).

  lhs: ``(N, C, *S)`` by default, rhs: ``(O, I, *K)``, result ``(N, O, *S_out)``; any other layout
  through ``dimension_numbers`` (a ``ConvDimensionNumbers``, or strings like
  ``("NHWC", "HWIO", "NHWC")``). Every argument means what it means for lax; ``impl`` names the
  jaxconv kernel (``jaxconv.available_impls()``), ``"auto"`` the one picked per call from shapes.
  """
  impl = kernels.check(impl, default=None)  # a string, as the signature says: None is a TypeError
  lhs, rhs = _check_array("lhs", lhs), _check_array("rhs", rhs)
  # lax's own canonicalisation: None -> (N, C, *S) / (O, I, *K) for any rank; TypeErrors name it.
  dnums = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  rank = lhs.ndim - 2
  strides = _check_ints("window_strides", window_strides, rank, minimum=1, below_error=ValueError)
  lhs_dil = _check_dilation("lhs_dilation", lhs_dilation, rank)
  rhs_dil = _check_dilation("rhs_dilation", rhs_dilation, rank)
  pad = _check_padding(padding, rank, lhs_dil)
  _check_group_count("feature_group_count", feature_group_count)
  _check_group_count("batch_group_count", batch_group_count)
  call = functools.partial(
    _lax_call,
    window_strides=strides,
    padding=pad,
    lhs_dilation=lhs_dil,
    rhs_dilation=rhs_dil,
    dimension_numbers=dnums,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
    out_sharding=out_sharding,
  )
  lax_only = (
    batch_group_count != 1
    or not jnp.issubdtype(lhs.dtype, jnp.floating)
    or not 1 <= rank <= 3
    or precision is not None
    or out_sharding is not None
  )
  if lax_only:
    return call(lhs, rhs)
  # lax's shape and dtype rules on shapes alone: the same errors as lax, and lax's output type.
  out = jax.eval_shape(call, jax.ShapeDtypeStruct(lhs.shape, lhs.dtype), jax.ShapeDtypeStruct(rhs.shape, rhs.dtype))
  if 0 in (math.prod(out.shape), lhs.size, rhs.size):
    # Nothing to compute: an empty output, or a sum over no input channels (lax gives zeros).
    return jnp.zeros(out.shape, out.dtype)
  x, w = _to_channels_last(lhs.astype(out.dtype), rhs.astype(out.dtype), dnums)
  pads = _explicit_pads(pad, x, w, strides, rhs_dil)
  x, pads = _dilate_and_crop(x, pads, lhs_dil)
  groups = int(feature_group_count)
  try:
    y = conv(x, w, stride=strides, padding=pads, dilation=rhs_dil, groups=groups, impl=impl)
  except ValueError:
    # Every argument is valid for lax (checked above), so this is the kernel's supports() refusing
    # the call; lax serves it.
    return call(lhs, rhs)
  return _from_channels_last(y, dnums)
