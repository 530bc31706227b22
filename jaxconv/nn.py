"""Flax NNX layers over the functional core: ``Conv`` (kernel selectable by ``impl``) and pooling.

Initialisation: ``Conv`` draws its kernel from ``kernel_init``, by default LeCun normal
(variance ``1 / fan_in``, ``fan_in = prod(kernel_size) * in_features // groups``), the right
scale for sigmoid/tanh layers and Flax's own default; pass ``He normal``
(``nnx.initializers.he_normal()``, variance ``2 / fan_in``) for ReLU layers, as
``jaxconv.models.LeNet`` does for its "modern" variant. Biases start at zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from jaxconv import ops
from jaxconv.kernels import get as get_kernel
from jaxconv.padding import Padding, normalize_ints, resolve_padding

# impl=None asks for this kernel where it is registered (it picks the fastest kernel per call
# from static shapes), and falls back to jc.conv's own default otherwise.
DEFAULT_IMPL = "auto"

Initializer = nnx.initializers.Initializer


def default_impl() -> str | None:
  """The kernel that ``impl=None`` selects: ``DEFAULT_IMPL`` if registered, else jc.conv's default."""
  return DEFAULT_IMPL if DEFAULT_IMPL in ops.available_impls() else None


def check_impl(impl: str | None) -> str | None:
  """``impl`` unchanged if it is None or a registered kernel name; ``ValueError`` naming it otherwise."""
  if impl is not None:
    get_kernel(impl)
  return impl


def kernel_tuple(kernel_size: int | Sequence[int]) -> tuple[int, ...]:
  """``kernel_size`` as a tuple; an int means one spatial axis, as in ``flax.nnx.Conv``."""
  rank = 1 if isinstance(kernel_size, int) else len(kernel_size)
  if rank not in (1, 2, 3):
    raise ValueError(f"kernel_size must give 1-3 spatial axes; got {kernel_size!r}")
  return normalize_ints(kernel_size, rank, "kernel_size")


def check_features(name: str, value: int, groups: int) -> int:
  """A feature count: a positive int divisible by ``groups``."""
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive int; got {value!r}")
  if value % groups:
    raise ValueError(f"groups={groups} must divide {name}={value}")
  return value


class Conv(nnx.Module):
  """Channels-last convolution (cross-correlation) ``(N, *spatial, in_features) -> (N, *out, out_features)``."""

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
      use_bias: bool = True,
      impl: str | None = None,
      kernel_init: Initializer = nnx.initializers.lecun_normal(),
      bias_init: Initializer = nnx.initializers.zeros_init(),
      rngs: nnx.Rngs,
  ):
    self.kernel_size = kernel_tuple(kernel_size)
    rank = len(self.kernel_size)
    self.groups = ops.check_groups(groups)
    self.in_features = check_features("in_features", in_features, self.groups)
    self.out_features = check_features("out_features", out_features, self.groups)
    self.stride = normalize_ints(stride, rank, "stride")
    self.dilation = normalize_ints(dilation, rank, "dilation")
    # Resolve once against a dummy input only to reject malformed padding at construction.
    resolve_padding(padding, self.kernel_size, self.kernel_size, self.stride, self.dilation)
    self.padding = padding
    self.use_bias = use_bias
    self.impl = check_impl(impl)
    shape = (*self.kernel_size, in_features // self.groups, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,))) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, in_features)`` -> ``(N, *out_spatial, out_features)``."""
    return ops.conv(
        x,
        self.kernel[...],
        None if self.bias is None else self.bias[...],
        stride=self.stride,
        padding=self.padding,
        dilation=self.dilation,
        groups=self.groups,
        impl=self.impl if self.impl is not None else default_impl(),
    )


def check_pool(window, stride, padding: Padding) -> None:
  """Reject a malformed pooling window, stride or padding at construction, naming the argument."""
  sequences = [v for v in (window, stride) if isinstance(v, Sequence)]
  rank = len(sequences[0]) if sequences else 1
  windows = normalize_ints(window, rank, "window")
  strides = windows if stride is None else normalize_ints(stride, rank, "stride")
  resolve_padding(padding, windows, windows, strides)


class MaxPool(nnx.Module):
  """Max over windows of x ``(N, *spatial, C)``; stride defaults to the window (see ``jc.max_pool``)."""

  def __init__(self, window: int | Sequence[int], stride: int | Sequence[int] | None = None, padding: Padding = "valid"):
    check_pool(window, stride, padding)
    self.window, self.stride, self.padding = window, stride, padding

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, C)`` -> ``(N, *out_spatial, C)``."""
    return ops.max_pool(x, self.window, self.stride, self.padding)


class AvgPool(nnx.Module):
  """Mean over windows of x ``(N, *spatial, C)``; stride defaults to the window (see ``jc.avg_pool``)."""

  def __init__(
      self,
      window: int | Sequence[int],
      stride: int | Sequence[int] | None = None,
      padding: Padding = "valid",
      count_include_pad: bool = True,
  ):
    check_pool(window, stride, padding)
    self.window, self.stride, self.padding = window, stride, padding
    self.count_include_pad = count_include_pad

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, *spatial, C)`` -> ``(N, *out_spatial, C)``."""
    return ops.avg_pool(x, self.window, self.stride, self.padding, self.count_include_pad)


def flatten(x: jax.Array) -> jax.Array:
  """``(N, ...)`` -> ``(N, prod(...))``."""
  return x.reshape(x.shape[0], -1)


__all__ = ["AvgPool", "Conv", "DEFAULT_IMPL", "MaxPool", "default_impl", "flatten"]
