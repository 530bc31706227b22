"""Training any Flax NNX classifier with any Optax optimiser: ``fit``, resumable, on one device or a mesh.

The public surface (``__all__``):

- ``fit(model, optimizer, train, *, epochs, ...)``: train in place; metrics per epoch.
- ``restore(model, workdir)``: load ``fit``'s newest intact checkpoint into a model.
- ``restore_model(workdir)``: the model a training program (``experiments/train.py``,
  ``experiments/train_lenet.py``) saved, ready for raw images.
- ``AugmentConfig``: on-device augmentation for ``fit(augment=...)``.
- The errors a run raises: ``NonFiniteLossError``, ``ConfigMismatchError``, ``WorkdirLockedError``,
  ``NoIntactCheckpointError``.

The pieces live in their modules: ``state`` (the pytrees a step updates), ``steps`` (the pure
train step, its loop, evaluation), ``loop`` (placement, shuffles, the epoch runner), ``trainer``
(``fit`` and the programs' ``run``), ``checkpoint`` (verified orbax checkpoints), ``lock`` (one run
per workdir), ``records`` (``metrics.jsonl``), ``augment`` (random shifts and warps on the device),
``inference`` (``restore_model``).
"""

from jaxconv.training.augment import AugmentConfig  # noqa: I001  (public names first, then the pieces)
from jaxconv.training.checkpoint import ConfigMismatchError, NoIntactCheckpointError
from jaxconv.training.lock import WorkdirLockedError
from jaxconv.training.loop import NonFiniteLossError
from jaxconv.training.inference import restore_model
from jaxconv.training.trainer import fit, restore

# Not public (absent from __all__): importable here for the benchmark and profiling scripts that
# build their own loops from the pieces; new code imports them from their modules.
from jaxconv.training.checkpoint import (  # noqa: F401
  Checkpoints,
  abstract,
  config_differences,
  quiet_writer_threads,
  tree_digest,
)
from jaxconv.training.lock import WorkdirLock  # noqa: F401
from jaxconv.training.loop import (  # noqa: F401
  check_finite_loss,
  check_labels,
  compile_steps,
  epoch_batches,
  epoch_key,
  place_eval,
  place_train,
  run_epoch,
  steps_per_epoch,
)
from jaxconv.training.state import Batch, TrainState, create_state, model_variables  # noqa: F401
from jaxconv.training.steps import (  # noqa: F401
  Metrics,
  add_metrics,
  batch_metrics,
  make_apply,
  make_evaluate,
  make_train_step,
  make_train_steps,
  mean_loss,
  summarize,
  zero_metrics,
)

__all__ = [
  "AugmentConfig",
  "ConfigMismatchError",
  "NoIntactCheckpointError",
  "NonFiniteLossError",
  "WorkdirLockedError",
  "fit",
  "restore",
  "restore_model",
]
