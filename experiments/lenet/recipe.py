"""The model and optimiser a config describes: LeNet or ResNet, the Optax optimiser and its schedule."""

from __future__ import annotations

from typing import Any

import ml_collections
import optax
from flax import nnx

from experiments.lenet.config import warmup_epochs
from jaxconv.training.inference import build_model, model_record

__all__ = ["create_model", "create_optimizer", "learning_rate_schedule", "model_spec"]


def model_spec(config: ml_collections.ConfigDict, input_shape: tuple[int, ...], num_classes: int = 10) -> dict:
  """The ``jaxconv.models`` class and keyword arguments of ``config.model`` for images ``(H, W, C)``, as JSON.

  This record goes into every checkpoint, so that ``jaxconv.training.restore_model(workdir)``
  rebuilds the model without the config.
  """
  kwargs: dict[str, Any] = {"impl": config.model.impl}
  # Only when they differ from the models' defaults (None, float32).
  if config.model.get("dtype") is not None:
    kwargs["dtype"] = config.model.dtype
  if config.model.get("param_dtype", "float32") not in (None, "float32"):
    kwargs["param_dtype"] = config.model.param_dtype
  if config.model.name == "lenet":
    return model_record("LeNet", num_classes=num_classes, variant=config.model.variant,
                        input_shape=tuple(input_shape), **kwargs)  # fmt: skip
  return model_record(
    "ResNet", num_classes=num_classes, in_features=input_shape[-1], stage_sizes=tuple(config.model.stage_sizes),
    widths=tuple(config.model.widths), **kwargs,
  )  # fmt: skip


def create_model(config: ml_collections.ConfigDict, input_shape: tuple[int, ...], num_classes: int = 10) -> nnx.Module:
  """The model of ``config.model`` for images ``(H, W, C)``, initialised from ``config.seed``."""
  return build_model(model_spec(config, input_shape, num_classes), rngs=nnx.Rngs(config.seed))


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate per step: constant, linear warmup then cosine decay to 0, or one-cycle.

  The warmup is ``config.warmup_epochs``, clipped to half the run when it is as long as the run
  (``config.warmup_epochs``), so that any ``num_epochs`` gives a schedule that decays.
  """
  total = config.num_epochs * steps_per_epoch
  peak = float(config.learning_rate)
  if config.schedule == "constant":
    return optax.constant_schedule(peak)
  warmup_epoch_count = warmup_epochs(config)
  if config.schedule == "warmup_cosine":
    warmup = int(warmup_epoch_count * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), 0.0)
  return optax.cosine_onecycle_schedule(total, peak, pct_start=warmup_epoch_count / config.num_epochs)


def create_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int, schedule: optax.Schedule | None = None
) -> optax.GradientTransformation:
  """The Optax optimiser of ``config.optimizer`` with its learning-rate schedule (``schedule`` if given)."""
  lr = learning_rate_schedule(config, steps_per_epoch) if schedule is None else schedule
  if config.optimizer == "adam":
    return optax.adam(lr)
  if config.optimizer == "adamw":
    return optax.adamw(lr, weight_decay=config.weight_decay)
  return optax.sgd(lr, momentum=config.momentum or None)
