"""The training program's config: validation of every field it reads, and which fields a resume may change.

The program trains the model ``config.model.name`` picks (``"lenet"``: ``jaxconv.models.LeNet``;
``"resnet"``: ``jaxconv.models.ResNet``); ``experiments/train_lenet.py`` and ``experiments/train.py``
are its command lines.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxconv import ops
from jaxconv.models import VARIANTS
from jaxconv.training import augment

__all__ = [
  "DATA_SOURCES",
  "DTYPES",
  "MODELS",
  "OPTIMIZERS",
  "RESUME_SAFE",
  "SCHEDULES",
  "augment_config",
  "augment_fields",
  "check_field",
  "config_record",
  "get_field",
  "validate_config",
  "warmup_epochs",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "one_cycle")
DATA_SOURCES = ("idx", "tfds")
MODELS = ("lenet", "resnet")
DTYPES = ("float32", "bfloat16", "float16")

log = logging.getLogger("jaxconv.program")

# Fields a resumed run may change: they decide how long and how the same computation runs, not
# what it computes. num_epochs extends (or ends) a run: the schedule stretches over the new total
# from the step reached. steps_per_call only groups the same steps into compiled calls;
# eval_batch_size, mesh and distributed move float32 rounding of the sums and gradients across
# devices, not the model (a checkpoint restores onto any mesh), and compiler_options the rounding
# of XLA's own code; model.impl picks a kernel of the same convolution, with the same parameters.
# Every other field (data, model.variant, batch size, seed, optimiser and schedule, and any field a
# later config adds) must match the checkpoint's.
RESUME_SAFE = (
  "num_epochs", "steps_per_call", "eval_batch_size", "model.impl", "mesh", "distributed", "compiler_options",
)  # fmt: skip


def get_field(config: ml_collections.ConfigDict, name: str) -> Any:
  """``config.<name>`` for a dotted name; ``ValueError`` naming the field if it is missing."""
  value = config
  for part in name.split("."):
    if part not in value:
      raise ValueError(f"config.{name} is missing")
    value = value[part]
  return value


def check_field(
  config: ml_collections.ConfigDict, name: str, kind: type | tuple[type, ...], ok: Callable[[Any], bool], must: str
) -> None:
  """Raise ``ValueError`` naming ``config.<name>`` unless its value has type ``kind`` and ``ok(value)``."""
  value = get_field(config, name)
  if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool) or not ok(value):
    raise ValueError(f"config.{name} must be {must}; got {value!r}")


def _finite(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
  """``ok`` restricted to finite numbers (``inf > 0`` and NaN comparisons would let them through)."""
  return lambda v: math.isfinite(v) and ok(v)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Check every field ``train_and_evaluate`` reads before anything is loaded or compiled."""
  anything = lambda v: True
  positive = lambda v: v > 0
  check_field(config, "data.source", str, lambda v: v in DATA_SOURCES, f"one of {DATA_SOURCES}")
  check_field(config, "data.dir", (str, type(None)), anything, "a directory path or None")
  check_field(config, "data.name", str, bool, "a TFDS dataset name")
  check_field(config, "data.train_size", int, lambda v: v >= 0, "an int >= 0 (0: the whole split)")
  check_field(config, "data.test_size", int, lambda v: v >= 0, "an int >= 0 (0: the whole split)")
  check_field(config, "model.name", str, lambda v: v in MODELS, f"one of {MODELS}")
  if config.model.name == "lenet":
    check_field(config, "model.variant", str, lambda v: v in VARIANTS, f"one of {VARIANTS}")
  else:
    positive_ints = lambda v: len(v) > 0 and all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)
    check_field(config, "model.stage_sizes", tuple, positive_ints, "a tuple of positive ints, one per stage")
    check_field(config, "model.widths", tuple, positive_ints, "a tuple of positive ints, one per stage")
    if len(config.model.stage_sizes) != len(config.model.widths):
      raise ValueError(
        f"config.model.widths must have one entry per stage of config.model.stage_sizes; "
        f"got {config.model.widths} and {config.model.stage_sizes}"
      )
  impls = ops.available_impls()
  check_field(config, "model.impl", (str, type(None)), lambda v: v is None or v in impls, f"None or one of {impls}")
  for name in ("model.dtype", "model.param_dtype"):
    if name.rpartition(".")[2] in config.model:
      check_field(config, name, (str, type(None)), lambda v: v is None or v in DTYPES, f"None or one of {DTYPES}")
  check_field(config, "num_epochs", int, positive, "a positive int")
  check_field(config, "batch_size", int, positive, "a positive int")
  check_field(config, "eval_batch_size", int, positive, "a positive int")
  check_field(config, "steps_per_call", int, positive, "a positive int")
  # numpy's generators (the shuffles) take seeds >= 0 only.
  check_field(config, "seed", int, lambda v: 0 <= v < 2**63, "an int in [0, 2**63)")
  check_field(config, "optimizer", str, lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}")
  check_field(config, "learning_rate", (float, int), _finite(positive), "a positive finite number")
  check_field(config, "momentum", (float, int), _finite(lambda v: 0 <= v < 1), "a number in [0, 1)")
  check_field(config, "weight_decay", (float, int), _finite(lambda v: v >= 0), "a finite number >= 0")
  check_field(config, "schedule", str, lambda v: v in SCHEDULES, f"one of {SCHEDULES}")
  check_field(config, "warmup_epochs", (float, int), _finite(lambda v: v >= 0), "a finite number >= 0")
  check_field(config, "label_smoothing", (float, int), _finite(lambda v: 0 <= v < 1), "a number in [0, 1)")
  if "compiler_options" in config:
    scalar = (str, bool)
    check_field(
      config, "compiler_options", ml_collections.ConfigDict, lambda v: all(isinstance(x, scalar) for x in v.values()),
      "a dict of XLA option names to str or bool values",
    )  # fmt: skip
  if "augment" not in config:
    raise ValueError("config.augment is missing")
  try:
    augment.from_config(config.augment)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.augment: {e}") from None
  check_field(config, "mesh.data", int, lambda v: v >= 0, "an int >= 0 (0: every device)")
  check_field(config, "distributed.enabled", bool, anything, "a bool")
  check_field(
    config, "distributed.coordinator_address", (str, type(None)), lambda v: v is None or ":" in v, "None or 'host:port'"
  )
  check_field(
    config, "distributed.num_processes", (int, type(None)), lambda v: v is None or v > 0, "None or a positive int"
  )
  check_field(config, "distributed.process_id", (int, type(None)), lambda v: v is None or v >= 0, "None or an int >= 0")
  if config.data.source == "idx" and config.data.dir is not None and not Path(config.data.dir).is_dir():
    raise ValueError(
      f"config.data.dir must be a directory holding the four IDX files; {config.data.dir!r} is not a directory"
    )


def warmup_epochs(config: ml_collections.ConfigDict) -> float:
  """``config.warmup_epochs``, clipped with a warning to half the run when it leaves no epochs to decay over.

  So that ``--config.num_epochs=1`` runs every config: a warmup as long as the run (or longer)
  would leave a one-cycle schedule nothing to anneal.
  """
  warmup, epochs = float(config.warmup_epochs), config.num_epochs
  if config.schedule != "constant" and warmup >= epochs:
    log.warning(
      "config.warmup_epochs=%g leaves no epochs to decay in config.num_epochs=%d: warming up over the first %g",
      warmup, epochs, epochs / 2,
    )  # fmt: skip
    return epochs / 2
  return warmup


def augment_fields(**values: Any) -> ml_collections.ConfigDict:
  """The ``config.augment`` block: every ``AugmentConfig`` field, zero unless given.

  ``fill`` is a float placeholder, so ``--config.augment.fill=0.0`` works from the command line.
  """
  block = ml_collections.ConfigDict(augment.config_fields(**values))
  if block.fill is None:
    block.fill = config_dict.placeholder(float)
  return block


def augment_config(config: ml_collections.ConfigDict) -> augment.AugmentConfig | None:
  """The ``AugmentConfig`` of ``config.augment``, or None when it changes nothing."""
  block = augment.from_config(config.augment)
  return block if block.enabled else None


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config.compiler_options`` as the dict ``fit`` takes (empty where a config has no such field)."""
  return config.compiler_options.to_dict() if "compiler_options" in config else {}


def config_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config`` as the nested JSON dict that a checkpoint records (and reads back)."""
  return json.loads(config.to_json_best_effort())
