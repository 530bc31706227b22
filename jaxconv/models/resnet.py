"""A ResNet for small images (He et al. 2016, the CIFAR variant): basic residual blocks, BatchNorm, global average pool.

Every convolution is a ``jaxconv.nn.Conv``, so ``impl`` picks the kernel of all of them, and the
dtype keywords reach every layer (convs, BatchNorms, the dense head), as in ``flax.nnx``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxconv import nn
from jaxconv._checks import check_int

# He normal suits the convs, which feed ReLUs (after BatchNorm); the head feeds softmax.
_CONV_INIT = nnx.initializers.he_normal()
# PyTorch's defaults (momentum 0.1 there is 0.9 here: flax's momentum is the running average's decay).
_BN_MOMENTUM, _BN_EPSILON = 0.9, 1e-5


def _batch_norm(features: int, dtypes: dict[str, Any], rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm over the channel axis; scale and bias in ``param_dtype``, running statistics in float32 (flax)."""
  return nnx.BatchNorm(features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, rngs=rngs, **dtypes)


class BasicBlock(nnx.Module):
  """Two 3x3 convs with BatchNorm, plus the shortcut: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

  x ``(N, H, W, in_features)`` -> ``(N, ceil(H / stride), ceil(W / stride), out_features)``. The
  first conv carries the stride; the shortcut is the identity, or, where the stride or the width
  changes, a strided 1x1 conv with BatchNorm (the projection shortcut, option B of the paper).

  Args:
    in_features: the channels of x.
    out_features: the channels of the output.
    stride: the first conv's (and the projection's) stride, 1 or 2.
    impl: the kernel of both convs and the projection (``nn.Conv``'s ``impl``).
    dtype: the computation dtype of every layer of the block (None: promoted), as in ``flax.nnx``.
    param_dtype: the dtype of the block's parameters.
    rngs: draws the parameters.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    stride: int = 1,
    impl: str | None = None,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    dtypes: dict[str, Any] = dict(dtype=dtype, param_dtype=param_dtype)
    conv = dict(use_bias=False, impl=impl, kernel_init=_CONV_INIT, rngs=rngs, **dtypes)  # BatchNorm has the bias
    self.conv1 = nn.Conv(in_features, out_features, (3, 3), stride=stride, padding=1, **conv)
    self.bn1 = _batch_norm(out_features, dtypes, rngs)
    self.conv2 = nn.Conv(out_features, out_features, (3, 3), padding=1, **conv)
    self.bn2 = _batch_norm(out_features, dtypes, rngs)
    self.projection: nn.Conv | None
    self.projection_bn: nnx.BatchNorm | None
    if stride != 1 or in_features != out_features:
      self.projection = nn.Conv(in_features, out_features, (1, 1), stride=stride, **conv)
      self.projection_bn = _batch_norm(out_features, dtypes, rngs)
    else:
      # nnx.data: the attribute holds a layer in other blocks, so it is data here too (None).
      self.projection, self.projection_bn = nnx.data(None), nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, H, W, in_features)`` -> ``(N, H', W', out_features)``."""
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x
    if self.projection is not None and self.projection_bn is not None:
      shortcut = self.projection_bn(self.projection(x))
    return nnx.relu(y + shortcut.astype(y.dtype))


def _check_stages(stage_sizes: Sequence[int], widths: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``stage_sizes`` and ``widths`` as tuples of positive ints of one length; errors name the argument."""
  for name, value in (("stage_sizes", stage_sizes), ("widths", widths)):
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
      raise TypeError(f"{name} must be a non-empty sequence of ints, one per stage; got {value!r}")
  sizes = tuple(check_int(s, "stage_sizes", minimum=1) for s in stage_sizes)
  chans = tuple(check_int(w, "widths", minimum=1) for w in widths)
  if len(sizes) != len(chans):
    raise ValueError(f"stage_sizes and widths must have one entry per stage; got {stage_sizes!r} and {widths!r}")
  return sizes, chans


class ResNet(nnx.Module):
  """A ResNet for small images (MNIST 28x28x1, CIFAR 32x32x3): x ``(N, H, W, in_features)`` -> ``(N, num_classes)``.

  ``features``: a 3x3 conv to ``widths[0]`` channels with BatchNorm and ReLU (no downsampling:
  the images are small), then one stage per entry of ``stage_sizes`` of that many ``BasicBlock``s
  of ``widths[i]`` channels; every stage after the first halves H and W in its first block (a
  stride-2 conv, with a strided 1x1 projection shortcut). ``classifier``: the global average over
  H and W, then a dense layer to ``num_classes``. The defaults (3 stages of one block, 16/32/64
  channels, 28x28 -> 28, 14, 7) have 77,754 parameters for 10 classes on 1-channel images.

  BatchNorm makes the model stateful: ``model.train()`` (the default) normalises with the batch
  statistics and updates the running ones; ``model.eval()`` uses the running statistics.

  Args:
    num_classes: the number of logits.
    in_features: the channels of the images.
    stage_sizes: the number of blocks of each stage.
    widths: the channels of each stage (one per entry of ``stage_sizes``).
    impl: the kernel of every convolution (``jaxconv.nn.Conv``'s ``impl``; None its default).
    dtype: the computation and output dtype of every layer (None: promoted from the input and
      the parameters), as in ``flax.nnx``.
    param_dtype: the dtype the parameters (conv kernels, BatchNorm scales and biases, the dense
      layer) are stored in; BatchNorm's running statistics stay float32, as in flax.
    rngs: draws the parameters.

  Raises:
    ValueError: a bad value (named), e.g. ``stage_sizes`` and ``widths`` of different lengths.
    TypeError: an argument of the wrong type (named), e.g. a non-floating ``param_dtype``.

  >>> model = ResNet(rngs=nnx.Rngs(0))
  >>> model(jnp.zeros((2, 28, 28, 1))).shape
  (2, 10)
  """

  def __init__(
    self,
    num_classes: int = 10,
    *,
    in_features: int = 1,
    stage_sizes: Sequence[int] = (1, 1, 1),
    widths: Sequence[int] = (16, 32, 64),
    impl: str | None = None,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    in_features = check_int(in_features, "in_features", minimum=1)
    self.stage_sizes, self.widths = _check_stages(stage_sizes, widths)
    dtypes: dict[str, Any] = dict(dtype=dtype, param_dtype=param_dtype)
    stem = nn.Conv(
      in_features,
      self.widths[0],
      (3, 3),
      padding=1,
      use_bias=False,
      impl=impl,
      kernel_init=_CONV_INIT,
      rngs=rngs,
      **dtypes,
    )
    layers: list[Any] = [stem, _batch_norm(self.widths[0], dtypes, rngs), nnx.relu]
    features = self.widths[0]
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        layers.append(BasicBlock(features, width, stride=stride, impl=impl, rngs=rngs, **dtypes))
        features = width
    self.features = nnx.Sequential(*layers)
    head = nnx.Linear(features, num_classes, rngs=rngs, **dtypes)
    self.classifier = nnx.Sequential(_global_average_pool, head)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, H, W, in_features)`` -> logits ``(N, num_classes)``."""
    return self.classifier(self.features(x))


def _global_average_pool(x: jax.Array) -> jax.Array:
  """``(N, H, W, C)`` -> ``(N, C)``: the mean over the spatial axes, accumulated in at least float32."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), dtype=jnp.promote_types(x.dtype, jnp.float32)).astype(x.dtype)


__all__ = ["BasicBlock", "ResNet"]
