"""``restore_model(workdir)``: a trained model back from a training program's work directory, ready for raw images.

The repository's programs (``experiments/train.py``, ``experiments/train_lenet.py``) train one of
``jaxconv.models`` on normalised images and record, in every checkpoint's metadata, which model
(``model``: the class name in ``jaxconv.models`` and its keyword arguments, JSON) and which
normalisation (``normalization``: ``mean`` and ``std`` of the training images scaled to [0, 1]).
``restore_model`` rebuilds that model, loads the newest intact checkpoint into it, puts it in
``eval()`` mode and wraps it in ``Normalized``, so that it takes images as ``jaxconv.data.load_mnist``
returns them (uint8, 0-255) and gives the logits the run evaluated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxconv import models
from jaxconv.training.checkpoint import Checkpoints
from jaxconv.training.state import TrainState
from jaxconv.training.trainer import CHECKPOINT_DIR, KEEP_CHECKPOINTS, _from_saved, _targets

__all__ = ["MODEL_META", "NORMALIZATION_META", "Normalized", "build_model", "model_record", "restore_model"]

MODEL_META = "model"  # {"name": a class of jaxconv.models, "kwargs": {...}}
NORMALIZATION_META = "normalization"  # {"mean": float, "std": float}: x -> (x / 255 - mean) / std
_DTYPE_KWARGS = ("dtype", "param_dtype")


class Normalized(nnx.Module):
  """``model((images / 255 - mean) / std)``: a model trained on normalised images, fed raw ones.

  Args:
    model: the trained model.
    mean, std: the training images' statistics after scaling to [0, 1].
  """

  def __init__(self, model: nnx.Module, mean: float, std: float):
    self.model, self.mean, self.std = model, float(mean), float(std)

  def __call__(self, images: jax.Array) -> jax.Array:
    """Raw images ``(N, H, W, C)`` (uint8 0-255, or floats on that scale) -> the model's logits ``(N, K)``."""
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    return self.model((x - self.mean) / self.std)


def model_record(name: str, **kwargs: Any) -> dict[str, Any]:
  """The JSON record of ``jaxconv.models.<name>(**kwargs)`` that ``build_model`` reads back.

  Tuples become lists and dtypes their names; ``rngs`` is not recorded (the checkpoint holds the parameters).
  """
  if not isinstance(getattr(models, name, None), type):
    raise ValueError(f"name must be a model class of jaxconv.models; got {name!r}")
  plain = {
    k: (jnp.dtype(v).name if k in _DTYPE_KWARGS and v is not None else list(v) if isinstance(v, tuple) else v)
    for k, v in kwargs.items()
  }
  return {"name": name, "kwargs": plain}


def build_model(record: Mapping[str, Any], *, rngs: nnx.Rngs, **overrides: Any) -> nnx.Module:
  """``jaxconv.models.<record["name"]>(**record["kwargs"], **overrides, rngs=rngs)``, lists read back as tuples."""
  name = record["name"]
  cls = getattr(models, name, None)
  if not isinstance(cls, type):
    raise ValueError(f"the recorded model {name!r} is not a class of jaxconv.models")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(record["kwargs"]).items()}
  return cls(**{**kwargs, **overrides}, rngs=rngs)


def restore_model(workdir: str | os.PathLike, *, normalize: bool = True, impl: str | None = None) -> nnx.Module:
  """The model a training program saved under ``workdir``, with its newest intact checkpoint, in eval mode.

  >>> model = restore_model("runs/lenet")  # doctest: +SKIP
  >>> images, labels = jaxconv.data.load_mnist(split="test")  # doctest: +SKIP
  >>> accuracy = (model(images).argmax(-1) == labels).mean()  # doctest: +SKIP

  Args:
    workdir: the ``--workdir`` of ``experiments/train.py`` or ``experiments/train_lenet.py``.
    normalize: wrap the model in ``Normalized`` (the run's normalisation), so that it takes raw
      images ``(N, H, W, C)`` uint8; False: the bare model, which takes normalised images.
    impl: the convolution kernel of the rebuilt model (default: the one it was trained with).

  Returns:
    The model, on this process's first device, in ``eval()`` mode (BatchNorm's running statistics).

  Raises:
    FileNotFoundError: there is no checkpoint under ``workdir``.
    ValueError: the checkpoints do not record their model (``fit``'s own: use ``training.restore``).
    NoIntactCheckpointError: every checkpoint is damaged (nothing is moved).
  """
  directory = Path(workdir) / CHECKPOINT_DIR
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint under {directory}")
  built: list[tuple[nnx.Module, TrainState]] = []
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def targets(meta: dict[str, Any]) -> dict[str, Any]:
    if MODEL_META not in meta:
      raise ValueError(
        f"the checkpoints under {directory} do not record their model (written by fit?); "
        "build the model and call jaxconv.training.restore(model, workdir)"
      )
    overrides = {} if impl is None else {"impl": impl}
    model = nnx.eval_shape(lambda: build_model(meta[MODEL_META], rngs=nnx.Rngs(0), **overrides))
    _, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]  # flax types it as variadic
    state = TrainState(params, None, rest)
    built.append((model, state))
    return {k: v for k, v in _targets(state, device).items() if k != "opt_state"}

  with Checkpoints(directory, KEEP_CHECKPOINTS, create=False) as checkpoints:
    restored = checkpoints.restore(targets, set_aside=False)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint under {directory}")
  _, items, meta = restored
  model, like = built[-1]
  loaded = _from_saved({**items, "opt_state": None}, like)
  nnx.update(model, loaded.params, loaded.rest)
  model.eval()
  norm = meta.get(NORMALIZATION_META)
  if not normalize or norm is None:
    return model
  return Normalized(model, norm["mean"], norm["std"])
