"""LeNet-5 (LeCun et al. 1998, as in d2l.ai): the classic sigmoid/average-pool net and its ReLU/max-pool variant."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxconv import nn
from jaxconv._checks import check_int

VARIANTS = ("modern", "classic")
# Names of the feature layers, which also scope their operations in profiles (``jax.named_scope``).
FEATURE_NAMES = ("conv1", "act1", "pool1", "conv2", "act2", "pool2")


def variant_layers(variant: str) -> tuple[Callable[[jax.Array], jax.Array], Callable[..., nnx.Module], nn.Initializer]:
  """The activation, pooling layer and kernel initialiser of a LeNet variant."""
  if variant == "modern":
    return nnx.relu, nn.MaxPool, nnx.initializers.he_normal()
  if variant == "classic":
    return nnx.sigmoid, nn.AvgPool, nnx.initializers.lecun_normal()
  raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")


class LeNet(nnx.Module):
  """LeNet-5: x ``(N, 28, 28, 1)`` (or another size the layers fit) -> logits ``(N, num_classes)``.

  features: 5x5 conv to 6 channels (padding 2), activation, 2x2 pool, 5x5 conv to 16, activation,
  2x2 pool; classifier: dense 120, activation, dense 84, activation, dense ``num_classes``.
  "classic" uses sigmoid and average pooling with LeCun-normal weights; "modern" uses ReLU and
  max pooling with He-normal weights for the layers before a ReLU (LeCun normal for the logits).
  61,706 parameters for 10 classes on 28x28x1 inputs.

  Args:
    num_classes: the number of logits.
    variant: "modern" or "classic" (see above).
    impl: the convolution kernel of both convs (``jaxconv.nn.Conv``'s ``impl``).
    input_shape: ``(H, W, C)`` of one image.
    dtype: the computation and output dtype of every conv and dense layer (None: promoted from
      the input and the parameters), as in ``flax.nnx``.
    param_dtype: the dtype the parameters are stored in.
    rngs: draws the parameters.

  Raises:
    ValueError: a bad value (named), e.g. an unknown ``variant`` or ``impl``.
    TypeError: an argument of the wrong type (named), e.g. a non-floating ``dtype``.
  """

  def __init__(
    self,
    num_classes: int = 10,
    *,
    variant: str = "modern",
    impl: str | None = None,
    input_shape: Sequence[int] = (28, 28, 1),
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    if len(input_shape) != 3:
      raise ValueError(f"input_shape must be (H, W, C); got {input_shape!r}")
    act, pool, init = variant_layers(variant)
    self.variant = variant
    dtypes: dict[str, Any] = dict(dtype=dtype, param_dtype=param_dtype)
    self.features = nnx.Sequential(
      nn.Conv(input_shape[-1], 6, (5, 5), padding=2, impl=impl, kernel_init=init, rngs=rngs, **dtypes),
      act,
      pool((2, 2)),
      nn.Conv(6, 16, (5, 5), impl=impl, kernel_init=init, rngs=rngs, **dtypes),
      act,
      pool((2, 2)),
    )
    probe = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    flat = jax.eval_shape(lambda x: nn.flatten(self.features(x)), probe).shape[-1]
    dense = lambda i, o, init=init: nnx.Linear(i, o, kernel_init=init, rngs=rngs, **dtypes)
    # Each layer's init suits the activation after it: the logits feed softmax, not ReLU.
    logits = dense(84, num_classes, nnx.initializers.lecun_normal())
    self.classifier = nnx.Sequential(nn.flatten, dense(flat, 120), act, dense(120, 84), act, logits)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x ``(N, H, W, C)`` -> logits ``(N, num_classes)``."""
    for name, layer in zip(FEATURE_NAMES, self.features.layers, strict=True):
      with jax.named_scope(name):
        x = layer(x)
    with jax.named_scope("classifier"):
      return self.classifier(x)
