"""Flax NNX layers over the functional core: ``Conv`` (kernel selectable by ``impl``) and pooling.

Dtypes, as in ``flax.nnx``'s layers: ``param_dtype`` (default float32) is the dtype the kernel and
bias are stored in; ``dtype`` is the dtype of the computation and the output. With ``dtype=None``
it is promoted from the input and the parameters (``flax.nnx.nn.dtypes.promote_dtype``: a bfloat16
input with float32 parameters computes in float32); otherwise the input and the parameters are cast
to ``dtype`` first. The casts are differentiable, so gradients come back in ``param_dtype``.

``kernel_size``: one int per spatial axis, e.g. ``(5, 5)`` for images. A bare int means every
spatial axis (as the pools' ``window`` does), and since the parameters are created at construction
it needs the number of axes then: it takes it from ``stride``, ``dilation`` or ``padding`` given per
axis; if none is, the int is refused (``TypeError`` naming ``kernel_size``) rather than guessed.
(``flax.nnx.Conv`` reads an int as one axis, then treats a 2-D input's rows as extra batch.)

Initialisation: ``Conv`` draws its kernel from ``kernel_init``, by default LeCun normal
(variance ``1 / fan_in``, ``fan_in = prod(kernel_size) * in_features // groups``), the right
scale for sigmoid/tanh layers and Flax's own default; pass ``He normal``
(``nnx.initializers.he_normal()``, variance ``2 / fan_in``) for ReLU layers, as
``jaxconv.models.LeNet`` does for its "modern" variant. Biases start at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from jaxconv import kernels, ops, pooling
from jaxconv._checks import check_bool, check_int, normalize_ints
from jaxconv.geometry import Padding, check_padding_mode, conv_geometry, resolve_window

Initializer = nnx.initializers.Initializer


def default_impl() -> str:
  """The kernel a layer's ``impl=None`` runs: ``jaxconv.kernels.layer_default()`` ("auto", the per-call choice).

  Resolved at each call, so a kernel registered or replaced later is the one that runs.
  """
  return kernels.layer_default()


def _axes_given(*values: object) -> int | None:
  """The number of spatial axes the first per-axis value (a sequence, not a string) gives, or None."""
  sequences = [v for v in values if isinstance(v, Sequence) and not isinstance(v, str)]
  return len(sequences[0]) if sequences else None


def _kernel_tuple(
  kernel_size: int | Sequence[int], stride: object, dilation: object, padding: object
) -> tuple[int, ...]:
  """``kernel_size`` as one int per spatial axis (see the module docstring for the rule of a bare int).

  Raises:
    TypeError: ``kernel_size`` is neither an int nor a sequence of ints, or a bare int with no
      per-axis ``stride``/``dilation``/``padding`` to give the number of axes.
    ValueError: a size below 1, or not 1-3 axes.
  """
  if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
    rank = len(kernel_size)
  else:
    size = check_int(kernel_size, "kernel_size", minimum=1)
    given = _axes_given(stride, dilation, padding)
    if given is None:
      raise TypeError(
        f"kernel_size={size} is an int, which means every spatial axis, and nothing gives the number of axes: "
        f"pass one int per axis, e.g. kernel_size=({size}, {size}) for images (N, H, W, C) or ({size},) for "
        f"signals (N, L, C)"
      )
    rank = given
  if rank not in (1, 2, 3):
    raise ValueError(f"kernel_size must give 1-3 spatial axes; got {kernel_size!r}")
  return normalize_ints(kernel_size, rank, "kernel_size")


def _axes(count: int) -> str:
  """``"1 spatial axis"``, ``"2 spatial axes"``."""
  return f"{count} spatial axis" if count == 1 else f"{count} spatial axes"


def _check_dtype(value: object, name: str, *, optional: bool) -> jnp.dtype | None:
  """A floating dtype (None passes when ``optional``); ``TypeError`` naming ``name`` otherwise."""
  if value is None and optional:
    return None
  try:
    dtype = jnp.dtype(cast(Any, value))
  except TypeError:
    raise TypeError(f"{name} must be a floating dtype such as jnp.float32; got {value!r}") from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating dtype such as jnp.float32; got {dtype}")
  return dtype


def _check_features(name: str, value: int, groups: int) -> int:
  """A feature count: a positive int divisible by ``groups``."""
  value = check_int(value, name, minimum=1)
  if value % groups:
    raise ValueError(f"groups={groups} must divide {name}={value}")
  return value


class _ConvLayer(nnx.Module):
  """What ``Conv`` and ``ConvTranspose`` share: features, groups, kernel and bias parameters, impl."""

  kernel_size: tuple[int, ...]
  stride: int | Sequence[int]
  padding: Padding
  dilation: int | Sequence[int]

  def _features_and_params(
    self, in_features, out_features, kernel_size, groups, use_bias, impl, dtype, param_dtype, kernel_init, bias_init,
    rngs, stride, dilation, padding,
  ) -> tuple[int, ...]:  # fmt: skip
    """Check and set the features, groups, impl and dtypes; create the kernel and bias; return the kernel's shape."""
    self.kernel_size = _kernel_tuple(kernel_size, stride, dilation, padding)
    self.groups = check_int(groups, "groups", minimum=1)
    self.in_features = _check_features("in_features", in_features, self.groups)
    self.out_features = _check_features("out_features", out_features, self.groups)
    self.use_bias = check_bool(use_bias, "use_bias")
    self.impl = None if impl is None else kernels.check(impl)
    self.dtype = _check_dtype(dtype, "dtype", optional=True)
    self.param_dtype = _check_dtype(param_dtype, "param_dtype", optional=False)
    shape = (*self.kernel_size, self.in_features // self.groups, self.out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, self.param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (self.out_features,), self.param_dtype)) if use_bias else None
    return shape

  def _inputs(self, x: object) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """x, the kernel and the bias in the computation dtype, after checking x against the layer's arguments.

    Raises:
      ValueError: x's spatial rank is not ``len(kernel_size)``, or its channels are not ``in_features``.
    """
    x = x if isinstance(x, jax.Array) else ops.as_float_array("x", x)
    rank = len(self.kernel_size)
    if x.ndim != rank + 2:
      raise ValueError(
        f"{type(self).__name__} has kernel_size={self.kernel_size} ({_axes(rank)}), so x must be "
        f"(N, *spatial, in_features) with {_axes(rank)} (ndim {rank + 2}); got x of shape {tuple(x.shape)} "
        f"({_axes(x.ndim - 2)})"
      )
    if x.shape[-1] != self.in_features:
      raise ValueError(
        f"{type(self).__name__} has in_features={self.in_features}, so x's last axis must be {self.in_features}; "
        f"got x of shape {tuple(x.shape)}"
      )
    bias = None if self.bias is None else self.bias[...]
    # flax.nnx's rule: dtype=None promotes x with the parameters; a dtype casts all three to it.
    x, kernel, bias = promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
    return x, kernel, bias

  def _geometry_kwargs(self) -> dict:
    """The keyword arguments ``jc.conv`` and ``jc.conv_transpose`` share."""
    impl = self.impl if self.impl is not None else kernels.layer_default()
    return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups, impl=impl)


class Conv(_ConvLayer):
  """Channels-last convolution (cross-correlation) ``(N, *spatial, in_features) -> (N, *out, out_features)``.

  The kernel is a parameter of shape ``(*kernel_size, in_features // groups, out_features)``
  stored in ``param_dtype``, the bias ``(out_features,)``.

  Args:
    in_features: C_in, the channels of x (divisible by ``groups``).
    out_features: C_out, the channels of the output (divisible by ``groups``).
    kernel_size: one int per spatial axis (1-3 axes). A bare int means every axis; the number of
      axes then comes from ``stride``, ``dilation`` or ``padding`` given per axis, else it is
      refused (see the module docstring).
    stride: an int or one per spatial axis, as ``jaxconv.conv``.
    padding: as ``jaxconv.conv``: "valid", "same", "causal", an int, one per axis, or ``(lo, hi)`` pairs.
    dilation: an int or one per spatial axis.
    groups: the number of channel groups (``in_features // groups`` inputs per output).
    padding_mode: how the pads are filled: "zeros", "reflect", "replicate", "circular", "symmetric".
    use_bias: whether to add a bias.
    impl: the kernel (``jaxconv.available_impls()``); None runs ``kernels.LAYER_DEFAULT`` ("auto").
    dtype: the dtype of the computation and the output; None promotes x with the parameters.
    param_dtype: the dtype the kernel and bias are stored in (and their gradients come in).
    kernel_init: the kernel's initialiser ``(key, shape, dtype) -> array`` (LeCun normal).
    bias_init: the bias's initialiser (zeros).
    rngs: the ``nnx.Rngs`` whose ``params`` stream draws the kernel.

  Raises:
    TypeError: a bare int ``kernel_size`` with no per-axis argument, a non-floating ``dtype``
      or ``param_dtype``, or an argument of the wrong type (named).
    ValueError: a bad value (named), e.g. ``groups`` not dividing ``in_features``; at call time,
      x whose rank does not fit ``kernel_size`` or whose channels are not ``in_features``.

  >>> layer = Conv(1, 6, (5, 5), padding=2, rngs=nnx.Rngs(0))
  >>> layer(jnp.zeros((2, 28, 28, 1))).shape
  (2, 28, 28, 6)
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "valid",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    use_bias: bool = True,
    impl: str | None = None,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    kernel_init: Initializer = nnx.initializers.lecun_normal(),
    bias_init: Initializer = nnx.initializers.zeros_init(),
    rngs: nnx.Rngs,
  ):
    shape = self._features_and_params(in_features, out_features, kernel_size, groups, use_bias, impl, dtype,
                                      param_dtype, kernel_init, bias_init, rngs, stride, dilation, padding)  # fmt: skip
    self.geometry = _smallest_input_geometry(shape, self.in_features, stride, padding, dilation, self.groups)
    self.stride, self.dilation, self.padding = self.geometry.stride, self.geometry.dilation, padding
    self.padding_mode = check_padding_mode(padding_mode, (), ())

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, in_features)`` -> ``(N, *out_spatial, out_features)``, in ``dtype`` (see the class)."""
    x, kernel, bias = self._inputs(x)
    # A kernel larger than the padded input: named as the layer's argument (jc.conv would name w).
    resolve_window(x.shape[1:-1], self.kernel_size, self.padding, self.stride, self.dilation,
                   kernel_name=f"kernel_size={self.kernel_size}")  # fmt: skip
    return ops.conv(x, kernel, bias, padding_mode=self.padding_mode, **self._geometry_kwargs())


class ConvTranspose(_ConvLayer):
  """Transposed convolution ``(N, *spatial, in_features) -> (N, *out, out_features)``, as ``jaxconv.conv_transpose``.

  The kernel is ``(*kernel_size, in_features // groups, out_features)``; each axis gives
  ``(n - 1) * stride + d * (k - 1) + 1 - lo - hi + output_padding`` outputs (PyTorch's ``ConvTranspose``).
  Arguments, dtypes and errors as ``Conv``; ``output_padding`` as ``jaxconv.conv_transpose``.

  >>> up = ConvTranspose(4, 2, (3, 3), stride=2, padding=1, output_padding=1, rngs=nnx.Rngs(0))
  >>> up(jnp.zeros((1, 7, 7, 4))).shape
  (1, 14, 14, 2)
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = "valid",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    output_padding: int | Sequence[int] = 0,
    use_bias: bool = True,
    impl: str | None = None,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    kernel_init: Initializer = nnx.initializers.lecun_normal(),
    bias_init: Initializer = nnx.initializers.zeros_init(),
    rngs: nnx.Rngs,
  ):
    shape = self._features_and_params(in_features, out_features, kernel_size, groups, use_bias, impl, dtype,
                                      param_dtype, kernel_init, bias_init, rngs, stride, dilation, padding)  # fmt: skip
    # Every argument checked once, on a one-pixel input (the transposed conv accepts any size).
    probe = jax.ShapeDtypeStruct((1, *(1,) * len(self.kernel_size), self.in_features), jnp.float32)
    ops.transpose_geometry(probe, jax.ShapeDtypeStruct(shape, jnp.float32), stride=stride, padding=padding,
                           dilation=dilation, groups=self.groups, output_padding=output_padding)  # fmt: skip
    self.stride, self.dilation, self.padding, self.output_padding = stride, dilation, padding, output_padding

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, in_features)`` -> ``(N, *out_spatial, out_features)``, in ``dtype`` (see ``Conv``)."""
    return ops.conv_transpose(*self._inputs(x), output_padding=self.output_padding, **self._geometry_kwargs())


def _smallest_input_geometry(
  w_shape: tuple[int, ...], in_features: int, stride, padding: Padding, dilation, groups: int
):
  """The geometry of the layer on the smallest input its kernel fits, validating every argument once.

  Calls resolve the geometry again on their real input (``"same"`` pads depend on its size).
  """
  rank = len(w_shape) - 2
  extent = [d * (k - 1) + 1 for k, d in zip(w_shape[:-2], normalize_ints(dilation, rank, "dilation"))]
  x_shape = (1, *extent, in_features)
  return conv_geometry(x_shape, w_shape, "float32", stride=stride, padding=padding, dilation=dilation, groups=groups)


def _pool_rank(*values: object) -> int:
  """The spatial rank a pooling layer's arguments imply: the length of its first sequence, else 1."""
  sequences = [v for v in values if isinstance(v, Sequence) and not isinstance(v, str)]
  return len(sequences[0]) if sequences else 1


def _check_pool(window, stride, padding: Padding, dilation=1, ceil_mode: bool = False) -> None:
  """Reject a malformed pooling window, stride, padding, dilation or ceil_mode at construction, naming the argument.

  Checked on the smallest input the (dilated) window fits; calls resolve on their real input.
  """
  rank = _pool_rank(window, stride, dilation)
  extent = [
    d * (k - 1) + 1 for k, d in zip(normalize_ints(window, rank, "window"), normalize_ints(dilation, rank, "dilation"))
  ]
  pooling.pool_geometry(extent, window, stride, padding, dilation, ceil_mode)


class MaxPool(nnx.Module):
  """Max over windows of x ``(N, *spatial, C)``, as ``torch.nn.MaxPool``; stride defaults to the window."""

  def __init__(
    self,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = "valid",
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
  ):
    _check_pool(window, stride, padding, dilation, ceil_mode)
    self.window, self.stride, self.padding = window, stride, padding
    self.dilation, self.ceil_mode = dilation, ceil_mode

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, C)`` -> ``(N, *out_spatial, C)``."""
    return pooling.max_pool(x, self.window, self.stride, self.padding, self.dilation, self.ceil_mode)


class AvgPool(nnx.Module):
  """Mean over windows of x ``(N, *spatial, C)``, as ``torch.nn.AvgPool``; stride defaults to the window."""

  def __init__(
    self,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = "valid",
    count_include_pad: bool = True,
    ceil_mode: bool = False,
  ):
    _check_pool(window, stride, padding, 1, ceil_mode)
    self.window, self.stride, self.padding = window, stride, padding
    self.count_include_pad = check_bool(count_include_pad, "count_include_pad")
    self.ceil_mode = ceil_mode

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, C)`` -> ``(N, *out_spatial, C)``."""
    return pooling.avg_pool(x, self.window, self.stride, self.padding, self.count_include_pad, self.ceil_mode)


class _AdaptivePool(nnx.Module):
  """An adaptive pool's output size, validated at construction (an int, or one int or None per axis)."""

  def __init__(self, output_size: int | Sequence[int | None]):
    rank = _pool_rank(output_size)
    if rank not in (1, 2, 3):
      raise ValueError(f"output_size must give 1-3 spatial axes; got {output_size!r}")
    pooling.adaptive_output_size((1,) * rank, output_size)  # None (keep the input size) passes on any input
    self.output_size = tuple(output_size) if isinstance(output_size, Sequence) else output_size


class AdaptiveAvgPool(_AdaptivePool):
  """Mean over PyTorch's adaptive cells: x ``(N, *spatial, C)`` -> ``(N, *output_size, C)`` (``jc.adaptive_avg_pool``).

  >>> AdaptiveAvgPool((1, 1))(jnp.ones((2, 7, 5, 3))).shape
  (2, 1, 1, 3)
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, C)`` -> ``(N, *output_size, C)``."""
    return pooling.adaptive_avg_pool(x, self.output_size)


class AdaptiveMaxPool(_AdaptivePool):
  """Max over PyTorch's adaptive cells: x ``(N, *spatial, C)`` -> ``(N, *output_size, C)`` (``adaptive_max_pool``)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, C)`` -> ``(N, *output_size, C)``."""
    return pooling.adaptive_max_pool(x, self.output_size)


def flatten(x: jax.Array) -> jax.Array:
  """``(N, ...)`` -> ``(N, prod(...))``."""
  return x.reshape(x.shape[0], -1)


__all__ = [
  "AdaptiveAvgPool",
  "AdaptiveMaxPool",
  "AvgPool",
  "Conv",
  "ConvTranspose",
  "MaxPool",
  "default_impl",
  "flatten",
]
