"""The model and optimiser a config describes: the LeNet variant, the Optax optimiser and its schedule."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxconv.models import LeNet

__all__ = ["create_model", "create_optimizer", "learning_rate_schedule"]


def create_model(config: ml_collections.ConfigDict, input_shape: tuple[int, ...], num_classes: int = 10) -> LeNet:
  """The LeNet of ``config.model`` initialised from ``config.seed``.

  ``config.model.dtype`` (optional, e.g. ``"bfloat16"``) is the computation dtype; parameters stay float32.
  """
  dtype = config.model.get("dtype")
  return LeNet(
    num_classes,
    variant=config.model.variant,
    impl=config.model.impl,
    input_shape=input_shape,
    dtype=None if dtype is None else jnp.dtype(dtype),
    rngs=nnx.Rngs(config.seed),
  )


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate per step: constant, linear warmup then cosine decay to 0, or one-cycle."""
  total = config.num_epochs * steps_per_epoch
  peak = float(config.learning_rate)
  if config.schedule == "constant":
    return optax.constant_schedule(peak)
  if config.schedule == "warmup_cosine":
    warmup = int(config.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), 0.0)
  return optax.cosine_onecycle_schedule(total, peak, pct_start=config.warmup_epochs / config.num_epochs)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """The Optax optimiser of ``config.optimizer`` with its learning-rate schedule."""
  lr = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "adam":
    return optax.adam(lr)
  if config.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=config.weight_decay)
  return optax.sgd(lr, momentum=config.momentum or None)
