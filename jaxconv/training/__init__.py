"""Training any Flax NNX classifier with any Optax optimiser: jit-compiled steps over device-resident data.

- ``state``: ``Batch``, ``TrainState`` and ``create_state(model, tx)``.
- ``steps``: pure ``train_step(state, batch)``, the ``fori_loop`` of steps, ``evaluate``, summed metrics.
- ``loop``: placing splits on a data-parallel mesh, seeded shuffles, the compiled epoch runner, its checks.
- ``checkpoint``: orbax checkpoints with SHA-256 digests, verified on restore; damaged steps set aside.
- ``lock``: one live run per work directory.
- ``augment``: on-device data augmentation (random shifts and affine warps) inside the compiled step.

Data parallelism comes from shardings on the inputs (``jaxconv.parallel``): with one device the
mesh is trivial and nothing else changes. The LeNet-on-MNIST program built on this lives in
``experiments/lenet/``.
"""

from jaxconv.training.augment import AugmentConfig
from jaxconv.training.checkpoint import (
  Checkpoints,
  ConfigMismatchError,
  NoIntactCheckpointError,
  abstract,
  config_differences,
  quiet_writer_threads,
  tree_digest,
)
from jaxconv.training.lock import WorkdirLock, WorkdirLockedError
from jaxconv.training.loop import (
  NonFiniteLossError,
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
from jaxconv.training.state import Batch, TrainState, create_state
from jaxconv.training.steps import (
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
  "Batch",
  "Checkpoints",
  "ConfigMismatchError",
  "Metrics",
  "NoIntactCheckpointError",
  "NonFiniteLossError",
  "TrainState",
  "WorkdirLock",
  "WorkdirLockedError",
  "abstract",
  "add_metrics",
  "batch_metrics",
  "check_finite_loss",
  "check_labels",
  "compile_steps",
  "config_differences",
  "create_state",
  "epoch_batches",
  "epoch_key",
  "make_apply",
  "make_evaluate",
  "make_train_step",
  "make_train_steps",
  "mean_loss",
  "place_eval",
  "place_train",
  "quiet_writer_threads",
  "run_epoch",
  "steps_per_epoch",
  "summarize",
  "tree_digest",
  "zero_metrics",
]
