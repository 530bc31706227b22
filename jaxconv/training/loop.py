"""Epochs over device-resident data: placement, seeded shuffles, the compiled epoch runner, its checks.

An epoch is a few calls of one compiled ``fori_loop`` over ``steps_per_call`` steps
(``steps.make_train_steps``), each gathering its shuffled batch on the device, so Python runs once
per call, not once per batch. Evaluation is one compiled ``scan`` over the whole test set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxconv import parallel
from jaxconv.training import augment
from jaxconv.training.state import Batch, TrainState, model_variables
from jaxconv.training.steps import Metrics, make_evaluate, make_train_step, make_train_steps, mean_loss, zero_metrics

__all__ = [
  "NonFiniteLossError",
  "check_compiler_options",
  "check_finite_loss",
  "check_labels",
  "compile_steps",
  "epoch_batches",
  "epoch_key",
  "place_eval",
  "place_train",
  "run_epoch",
  "steps_per_epoch",
]

CompilerOptions = Mapping[str, str | bool]
PAD_LABEL = -1  # the label of the rows that place_eval adds; user labels are checked to be >= 0


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; ``epoch`` names the epoch."""

  def __init__(self, epoch: int, loss: float):
    self.epoch, self.loss = epoch, loss
    super().__init__(
      f"training loss is {loss} in epoch {epoch}: the optimisation diverged (learning rate too high?) "
      "or the inputs hold NaN/inf values; nothing of this epoch was saved"
    )


def check_finite_loss(metrics: Metrics, epoch: int) -> None:
  """Raise ``NonFiniteLossError`` unless the summed training loss of ``epoch`` is finite."""
  loss = mean_loss(metrics)
  if not math.isfinite(loss):
    raise NonFiniteLossError(epoch, loss)


def check_compiler_options(options: Any) -> dict[str, str | bool]:
  """``options`` as a dict of XLA compiler options; ``TypeError``/``ValueError`` naming ``compiler_options``.

  Args:
    options: None, or a mapping of XLA option names (``DebugOptions`` fields, as in ``XLA_FLAGS``
      without the dashes) to str or bool values (numbers as strings: ``"512"``).

  Returns:
    The options as a dict (empty for None), checked by compiling a trivial program with them, so
    that an option XLA does not know is refused before the training program is traced.
  """
  if options is None:
    return {}
  if not isinstance(options, Mapping):
    raise TypeError(f"compiler_options must be a mapping of option names to values, or None; got {options!r}")
  for name, value in options.items():
    if not isinstance(name, str) or not isinstance(value, str | bool):
      raise TypeError(f"compiler_options must map str names to str or bool values; got {name!r}: {value!r}")
  options = dict(options)
  if options:
    try:
      jax.jit(lambda: jnp.zeros(())).lower().compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as e:
      raise ValueError(f"compiler_options={options!r}: XLA refuses them: {e}") from None
  return options


def check_labels(labels: np.ndarray, num_classes: int, split: str) -> None:
  """``ValueError`` naming the split, the count and the values unless every label lies in ``[0, num_classes)``."""
  labels = np.asarray(labels)
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    values = np.unique(labels[bad])
    shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    raise ValueError(
      f"{int(bad.sum())} of the {len(labels)} {split} labels are outside [0, {num_classes}) (values {shown})"
    )


def place_train(images: np.ndarray, labels: np.ndarray, mesh: Mesh) -> Batch:
  """A training split sharded along its examples over ``mesh``, its last ``N % D`` examples dropped (``D`` devices)."""
  keep = len(labels) - len(labels) % parallel.num_shards(mesh)
  return _place(images[:keep], labels[:keep], mesh)


def place_eval(images: np.ndarray, labels: np.ndarray, mesh: Mesh) -> Batch:
  """An evaluation split sharded over ``mesh``, padded to a multiple of its devices with rows that evaluation masks."""
  pad = -len(labels) % parallel.num_shards(mesh)
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.full(pad, PAD_LABEL, labels.dtype)])
  return _place(images, labels, mesh)


def _place(images: np.ndarray, labels: np.ndarray, mesh: Mesh) -> Batch:
  """``Batch(images, labels)`` as global arrays split along the examples; each process copies only its rows."""
  rows = parallel.process_rows(len(labels), mesh)
  return Batch(*parallel.shard_examples((images[rows], labels[rows]), mesh, len(labels)))


def steps_per_epoch(num_examples: int, batch_size: int, shards: int = 1) -> int:
  """Full batches in an epoch whose batches take ``batch_size / shards`` rows from each of ``shards`` shards."""
  return (num_examples // shards) // (batch_size // shards)


def epoch_batches(seed: int, epoch: int, num_examples: int, batch_size: int, mesh: Mesh | None = None) -> jax.Array:
  """Row indices ``(steps, batch_size)`` of epoch ``epoch``'s shuffle; the remainder is dropped.

  With a mesh of ``D`` devices, column block ``d`` shuffles shard ``d`` (rows ``< num_examples / D``
  of it, for ``parallel.gather_shards``) and is placed on device ``d``.
  """
  shards = parallel.num_shards(mesh)
  steps, size = steps_per_epoch(num_examples, batch_size, shards), batch_size // shards
  # numpy: the same permutation on every backend and host, and nothing to compile. Shard d's
  # permutation is the generator's d-th draw, so one shard gets the global shuffle.
  rng = np.random.default_rng((seed, epoch))
  blocks = [rng.permutation(num_examples // shards)[: steps * size].reshape(steps, size) for _ in range(shards)]
  rows = np.concatenate(blocks, axis=1).astype(np.int32)
  return (
    jnp.asarray(rows)
    if mesh is None
    else parallel.global_array(rows, parallel.sharding(mesh, None, parallel.DATA_AXIS))
  )


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """The random key of epoch ``epoch``'s training steps (augmentation), from ``seed`` alone."""
  return jax.random.fold_in(jax.random.key(seed), epoch)


def compile_steps(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  state: TrainState,
  train: Batch,
  test: Batch | None,
  batch_size: int,
  eval_batch_size: int,
  mesh: Mesh,
  *,
  augmentation: augment.AugmentConfig | None = None,
  label_smoothing: float = 0.0,
  eval_graphdef: nnx.GraphDef | None = None,
  compiler_options: CompilerOptions | None = None,
):
  """Ahead-of-time compiled ``train_steps`` and ``evaluate`` for these shapes, data parallel over ``mesh``.

  State and metrics are replicated, the data and each epoch's ``idx`` (``epoch_batches``) split
  along their examples. ``graphdef`` is the model in training mode; ``eval_graphdef`` (default
  ``graphdef``) the one evaluation runs, in ``model.eval()`` mode. ``evaluate(model_variables(state),
  test)`` gives the summed test metrics; it is None without ``test``. Both are compiled with
  ``compiler_options`` (XLA option names to values, as ``check_compiler_options`` takes them).
  """
  replicated, examples = parallel.sharding(mesh), parallel.sharding(mesh, parallel.DATA_AXIS)
  steps = steps_per_epoch(train.labels.shape[0], batch_size, parallel.num_shards(mesh))
  idx = jax.ShapeDtypeStruct((steps, batch_size), jnp.int32)
  in_shardings = (
    replicated,
    replicated,
    examples,
    parallel.sharding(mesh, None, parallel.DATA_AXIS),
    replicated,
    replicated,
    replicated,
  )
  # The state is donated: each call updates the parameters and Adam moments in place.
  jitted = jax.jit(
    make_train_steps(
      make_train_step(graphdef, tx, mesh, augmentation=augmentation, label_smoothing=label_smoothing), mesh
    ),
    in_shardings=in_shardings,
    out_shardings=replicated,
    donate_argnums=0,
  )
  options = dict(compiler_options or {}) or None
  train_steps = jitted.lower(state, zero_metrics(), train, idx, 0, 0, epoch_key(0, 0)).compile(compiler_options=options)
  if test is None:
    return train_steps, None
  evaluate = jax.jit(
    make_evaluate(graphdef if eval_graphdef is None else eval_graphdef, eval_batch_size, mesh),
    in_shardings=(replicated, examples),
    out_shardings=replicated,
  )
  return train_steps, evaluate.lower(model_variables(state), test).compile(compiler_options=options)


def run_epoch(
  train_steps,
  state: TrainState,
  data: Batch,
  idx: jax.Array,
  steps_per_call: int,
  progress: Callable[[int, Metrics], None] | None = None,
  key: jax.Array | None = None,
) -> tuple[TrainState, Metrics]:
  """All steps of one epoch in calls of ``steps_per_call`` steps; returns the state and summed metrics (on the host).

  ``progress(done, metrics)``, if given, is called with the steps finished and their summed metrics;
  ``key`` (``epoch_key(seed, epoch)``; default ``epoch_key(0, 0)``) seeds the steps' augmentation.
  """
  key = epoch_key(0, 0) if key is None else key
  steps = idx.shape[0]
  metrics = zero_metrics()
  for start in range(0, steps, steps_per_call):
    previous = metrics
    state, metrics = train_steps(state, metrics, data, idx, start, min(start + steps_per_call, steps), key)
    # Reading the previous call's sums waits for that call only: the next one is already queued.
    if progress is not None and start:
      progress(start, previous)
  metrics = jax.device_get(metrics)
  if progress is not None:
    progress(steps, metrics)
  return state, metrics
