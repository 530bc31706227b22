"""Optax training of the LeNets: jit-compiled steps scanned over device-resident data, per-epoch
evaluation, orbax checkpoints, ``metrics.jsonl`` and ``curves.png`` in the work directory.

The unit of computation is ``train_step(state, batch) -> (state, metrics)``, a pure function of
pytrees (the model enters as ``nnx.split`` state, rebuilt by ``nnx.merge`` under the trace), so
data parallelism only needs shardings on its inputs (``jaxconv.parallel``): a ``Mesh`` with
``batch`` sharded along its leading axis and ``state`` replicated. Metrics are per-batch sums,
which add across shards. With one device the mesh is trivial and nothing else changes.

An epoch is a few calls of one compiled ``fori_loop`` over ``config.steps_per_call`` steps, each
gathering its shuffled batch on the device, so Python runs once per call, not once per batch.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax import lax
from jax.sharding import Mesh

from jaxconv import data as datasets
from jaxconv import ops, parallel
from jaxconv.models import VARIANTS, LeNet

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "one_cycle")
DATA_SOURCES = ("idx", "tfds")
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
CHECKPOINT_DIR = "checkpoints"

log = logging.getLogger(__name__)


class Batch(NamedTuple):
  """Images ``(N, H, W, C)`` float32 (normalised) and int32 labels ``(N,)``."""

  images: jax.Array
  labels: jax.Array


class TrainState(NamedTuple):
  """Everything a step updates: the model's parameters and the optimiser state."""

  params: nnx.State
  opt_state: optax.OptState


Metrics = dict[str, jax.Array]  # per-batch sums: "loss", "correct", "count"


# --------------------------------------------------------------------------------------------
# config


def default_config() -> ml_collections.ConfigDict:
  """Every field ``train_and_evaluate`` reads, set to a modern LeNet on the bundled MNIST."""
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict()
  config.data.source = "idx"  # "idx": IDX files in data.dir; "tfds": tfds.data_source(data.name)
  config.data.dir = config_dict.placeholder(str)  # None: the bundled MNIST (idx), TFDS's default (tfds)
  config.data.name = "mnist"
  config.data.train_size = 0  # > 0: only the first examples of the split (smoke runs)
  config.data.test_size = 0
  config.model = ml_collections.ConfigDict()
  config.model.variant = "modern"
  config.model.impl = config_dict.placeholder(str)  # None: jaxconv.nn's default kernel
  config.num_epochs = 10
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.steps_per_call = 50  # training steps per compiled call, i.e. per progress-bar update
  config.seed = 0
  config.optimizer = "adamw"
  config.learning_rate = 3e-3  # the peak of the schedule
  config.momentum = 0.9  # sgd only
  config.weight_decay = 0.05  # adamw only (decoupled: each step shrinks weights by lr * weight_decay)
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 1.0
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = 0  # devices the batch is split over (data parallelism); 0: every device
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False  # True: jax.distributed.initialize first (one process per host)
  # None: found by JAX from JAX_COORDINATOR_ADDRESS or the cluster (SLURM, Open MPI, Kubernetes, TPU).
  config.distributed.coordinator_address = config_dict.placeholder(str)  # "host:port" of process 0
  config.distributed.num_processes = config_dict.placeholder(int)
  config.distributed.process_id = config_dict.placeholder(int)
  return config


# --------------------------------------------------------------------------------------------
# config validation


def get_field(config: ml_collections.ConfigDict, name: str) -> Any:
  """``config.<name>`` for a dotted name; ``ValueError`` naming the field if it is missing."""
  value = config
  for part in name.split("."):
    if part not in value:
      raise ValueError(f"config.{name} is missing")
    value = value[part]
  return value


def check_field(config: ml_collections.ConfigDict, name: str, kind: type | tuple[type, ...], ok: Callable[[Any], bool], must: str) -> None:
  """Raise ``ValueError`` naming ``config.<name>`` unless its value has type ``kind`` and ``ok(value)``."""
  value = get_field(config, name)
  if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool) or not ok(value):
    raise ValueError(f"config.{name} must be {must}; got {value!r}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Check every field ``train_and_evaluate`` reads before anything is loaded or compiled."""
  anything = lambda v: True  # noqa: E731
  positive = lambda v: v > 0  # noqa: E731
  check_field(config, "data.source", str, lambda v: v in DATA_SOURCES, f"one of {DATA_SOURCES}")
  check_field(config, "data.dir", (str, type(None)), anything, "a directory path or None")
  check_field(config, "data.name", str, bool, "a TFDS dataset name")
  check_field(config, "data.train_size", int, lambda v: v >= 0, "an int >= 0 (0: the whole split)")
  check_field(config, "data.test_size", int, lambda v: v >= 0, "an int >= 0 (0: the whole split)")
  check_field(config, "model.variant", str, lambda v: v in VARIANTS, f"one of {VARIANTS}")
  impls = ops.available_impls()
  check_field(config, "model.impl", (str, type(None)), lambda v: v is None or v in impls, f"None or one of {impls}")
  check_field(config, "num_epochs", int, positive, "a positive int")
  check_field(config, "batch_size", int, positive, "a positive int")
  check_field(config, "eval_batch_size", int, positive, "a positive int")
  check_field(config, "steps_per_call", int, positive, "a positive int")
  check_field(config, "seed", int, anything, "an int")
  check_field(config, "optimizer", str, lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}")
  check_field(config, "learning_rate", (float, int), positive, "a positive number")
  check_field(config, "momentum", (float, int), lambda v: 0 <= v < 1, "a number in [0, 1)")
  check_field(config, "weight_decay", (float, int), lambda v: v >= 0, "a number >= 0")
  check_field(config, "schedule", str, lambda v: v in SCHEDULES, f"one of {SCHEDULES}")
  check_field(config, "warmup_epochs", (float, int), lambda v: 0 <= v <= config.num_epochs, "a number in [0, num_epochs]")
  check_field(config, "mesh.data", int, lambda v: v >= 0, "an int >= 0 (0: every device)")
  check_field(config, "distributed.enabled", bool, anything, "a bool")
  check_field(config, "distributed.coordinator_address", (str, type(None)), lambda v: v is None or ":" in v, "None or 'host:port'")
  check_field(config, "distributed.num_processes", (int, type(None)), lambda v: v is None or v > 0, "None or a positive int")
  check_field(config, "distributed.process_id", (int, type(None)), lambda v: v is None or v >= 0, "None or an int >= 0")
  if config.data.source == "idx" and config.data.dir is not None and not Path(config.data.dir).is_dir():
    raise ValueError(f"config.data.dir must be a directory holding the four IDX files; {config.data.dir!r} is not a directory")


# --------------------------------------------------------------------------------------------
# data


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """One split from ``config.data``, cut to ``train_size``/``test_size`` examples when those are > 0."""
  if config.data.source == "idx":
    images, labels = datasets.load_mnist(config.data.dir or datasets.MNIST_DIR, split)
  else:
    images, labels = datasets.load_tfds(config.data.name, split, config.data.dir)
  limit = config.data.train_size if split == "train" else config.data.test_size
  return (images[:limit], labels[:limit]) if limit else (images, labels)


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
  """uint8 images ``(N, H, W, C)`` -> float32 ``(x / 255 - mean) / std``."""
  return (images.astype(np.float32) / 255.0 - mean) / std


def place(images: np.ndarray, labels: np.ndarray, mean: float, std: float, mesh: Mesh) -> Batch:
  """A split normalised and sharded along its examples over ``mesh``; each process copies only its rows."""
  rows = parallel.process_rows(len(labels), mesh)
  return parallel.shard_examples(Batch(normalize(images[rows], mean, std), labels[rows]), mesh, len(labels))


def device_data(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> tuple[Batch, Batch]:
  """Train and test splits, normalised with the training set's mean and std, sharded over ``mesh``.

  ``mesh`` defaults to ``config.mesh.data`` devices. Each of its ``D`` devices holds an equal block:
  the training set loses its last ``N % D`` examples, the test set gets label -1 padding that
  ``evaluate`` masks.
  """
  mesh = mesh or parallel.make_mesh(config.mesh.data)
  train_x, train_y = load_split(config, "train")
  test_x, test_y = load_split(config, "test")
  if config.batch_size > len(train_x):
    raise ValueError(f"config.batch_size={config.batch_size} is larger than the training set ({len(train_x)} examples)")
  # Statistics of the whole split on every process, so that every host normalises alike.
  scaled = train_x.astype(np.float64) / 255.0
  mean, std = float(scaled.mean()), float(scaled.std())
  shards = parallel.num_shards(mesh)
  keep, pad = len(train_y) - len(train_y) % shards, -len(test_y) % shards
  test_x = np.concatenate([test_x, np.zeros((pad, *test_x.shape[1:]), test_x.dtype)])
  test_y = np.concatenate([test_y, np.full(pad, -1, test_y.dtype)])
  return place(train_x[:keep], train_y[:keep], mean, std, mesh), place(test_x, test_y, mean, std, mesh)


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
  return jnp.asarray(rows) if mesh is None else parallel.global_array(rows, parallel.sharding(mesh, None, parallel.DATA_AXIS))


# --------------------------------------------------------------------------------------------
# model, optimiser, steps


def create_model(config: ml_collections.ConfigDict, input_shape: tuple[int, ...], num_classes: int = 10) -> LeNet:
  """The LeNet of ``config.model`` initialised from ``config.seed``."""
  return LeNet(num_classes, variant=config.model.variant, impl=config.model.impl, input_shape=input_shape, rngs=nnx.Rngs(config.seed))


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


def batch_metrics(logits: jax.Array, labels: jax.Array) -> Metrics:
  """Summed cross-entropy, number correct and count of logits ``(B, K)`` against labels ``(B,)``."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
      "loss": losses.sum(),
      "correct": (logits.argmax(-1) == labels).sum(),
      "count": jnp.asarray(labels.shape[0], jnp.int32),
  }


def zero_metrics() -> Metrics:
  """Additive identity of ``batch_metrics``."""
  return {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32), "count": jnp.zeros((), jnp.int32)}


def add_metrics(a: Metrics, b: Metrics) -> Metrics:
  """Elementwise sum of two metric dicts."""
  return jax.tree.map(jnp.add, a, b)


def make_apply(graphdef: nnx.GraphDef, mesh: Mesh | None = None) -> Callable[[nnx.State, jax.Array], jax.Array]:
  """``apply(params, images) -> logits`` of the model, run by each device of ``mesh`` on its own images."""
  return parallel.per_device(lambda params, images: nnx.merge(graphdef, params)(images), mesh)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh | None = None) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """``train_step(state, batch) -> (state, metrics)``: forward, loss, grad and Optax update."""
  apply = make_apply(graphdef, mesh)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One optimisation step on ``batch``; metrics are sums over its examples."""

    def loss_fn(params: nnx.State) -> tuple[jax.Array, Metrics]:
      metrics = batch_metrics(apply(params, batch.images), batch.labels)
      return metrics["loss"] / batch.labels.shape[0], metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), metrics

  return train_step


def make_train_steps(train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]], mesh: Mesh | None = None):
  """``train_steps(state, metrics, data, idx, start, stop)``: steps ``start..stop-1`` of ``idx (S, B)`` (``epoch_batches``)."""

  def train_steps(state: TrainState, metrics: Metrics, data: Batch, idx: jax.Array, start: jax.Array, stop: jax.Array):
    """Run ``train_step`` on the batches of rows ``idx[i]`` for ``start <= i < stop``, summing metrics."""

    def body(i: jax.Array, carry: tuple[TrainState, Metrics]) -> tuple[TrainState, Metrics]:
      state, metrics = carry
      state, step_metrics = train_step(state, parallel.gather_shards(data, idx[i], mesh))
      return state, add_metrics(metrics, step_metrics)

    return lax.fori_loop(start, stop, body, (state, metrics))

  return train_steps


def make_evaluate(graphdef: nnx.GraphDef, batch_size: int, mesh: Mesh | None = None):
  """``evaluate(params, data) -> metrics`` over all of ``data`` in batches of ``batch_size``."""
  shards = parallel.num_shards(mesh)
  apply = make_apply(graphdef, mesh)

  def evaluate(params: nnx.State, data: Batch) -> Metrics:
    """Summed metrics of the model on every example of ``data`` with a label >= 0 (the last batch is masked)."""
    n = data.labels.shape[0] // shards  # per shard: each batch takes the same rows of every shard
    size = min(batch_size // shards, n)
    batches = math.ceil(n / size)
    rows = jnp.minimum(jnp.arange(batches * size), n - 1).reshape(batches, size)

    def body(totals: Metrics, batch_rows: jax.Array) -> tuple[Metrics, None]:
      batch = parallel.gather_shards(data, jnp.tile(batch_rows, shards), mesh)
      logits = apply(params, batch.images)
      in_range = (jnp.arange(size) + batch_rows[0] < n) if batches * size > n else jnp.ones(size, bool)
      valid = jnp.tile(in_range, shards) & (batch.labels >= 0)  # label -1: padding of device_data
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels)
      metrics = {
          "loss": jnp.where(valid, losses, 0.0).sum(),
          "correct": (valid & (logits.argmax(-1) == batch.labels)).sum(),
          "count": valid.sum(dtype=jnp.int32),
      }
      return add_metrics(totals, metrics), None

    return lax.scan(body, zero_metrics(), rows)[0]

  return evaluate


def summarize(metrics: Metrics, prefix: str) -> dict[str, float]:
  """Summed metrics -> ``{prefix_loss, prefix_accuracy}`` means."""
  count = max(int(metrics["count"]), 1)
  return {f"{prefix}_loss": float(metrics["loss"]) / count, f"{prefix}_accuracy": int(metrics["correct"]) / count}


# --------------------------------------------------------------------------------------------
# progress, metrics file, plots


class Progress:
  """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

  def __init__(self, total: int, label: str, enabled: bool | None = None):
    self.total, self.label, self.start = total, label, time.perf_counter()
    self.enabled = sys.stderr.isatty() and parallel.is_main_process() if enabled is None else enabled

  def update(self, done: int, note: str = "") -> None:
    """Redraw with ``done`` of ``total`` units finished."""
    if not self.enabled:
      return
    width = 30
    filled = int(width * done / max(self.total, 1))
    elapsed = time.perf_counter() - self.start
    sys.stderr.write(f"\r{self.label} |{'#' * filled}{'.' * (width - filled)}| {done}/{self.total} {elapsed:5.1f}s {note}\x1b[K")
    sys.stderr.flush()

  def close(self) -> None:
    """End the bar's line."""
    if self.enabled:
      sys.stderr.write("\n")
      sys.stderr.flush()


def write_metrics(path: Path, history: list[dict]) -> None:
  """Replace ``path`` atomically by one JSON line per epoch of ``history``."""
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
  tmp.replace(path)


def append_metrics(path: Path, record: dict) -> None:
  """Append one epoch's JSON line to ``path``."""
  with path.open("a") as f:
    f.write(json.dumps(record) + "\n")


def plot_curves(history: list[dict], path: Path) -> None:
  """Loss and accuracy per epoch (train and test) as a PNG at ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = [r["epoch"] for r in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
  for split in ("train", "test"):
    ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], "o-", label=split)
    ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in history], "o-", label=split)
  ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
  ax_acc.set(xlabel="epoch", ylabel="%", title=f"accuracy (test: {100 * history[-1]['test_accuracy']:.2f}% at epoch {epochs[-1]})")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# --------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_manager(workdir: Path) -> ocp.CheckpointManager:
  """Orbax manager of ``workdir/checkpoints``, one step per finished epoch, the last two kept."""
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager((workdir / CHECKPOINT_DIR).absolute(), options=options)


def save_checkpoint(manager: ocp.CheckpointManager, epoch: int, state: TrainState, meta: dict) -> None:
  """Save ``state`` and ``meta`` (the model's input shape, the metrics of epochs ``1..epoch``)."""
  args = ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state),
      meta=ocp.args.JsonSave(meta),
  )
  manager.save(epoch, args=args)
  manager.wait_until_finished()


def abstract(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """Shape-and-dtype stand-ins for the arrays of ``tree``, a restore target; ``sharding`` overrides their layout."""
  structs = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return structs if sharding is None else jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), structs)


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState) -> tuple[int, TrainState, list[dict]]:
  """The latest ``(epoch, state, history)``, or ``(0, state, [])`` if nothing was saved."""
  epoch = manager.latest_step()
  if epoch is None:
    return 0, state, []
  args = ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract(state.params)),
      opt_state=ocp.args.StandardRestore(abstract(state.opt_state)),
      meta=ocp.args.JsonRestore(),
  )
  restored = manager.restore(epoch, args=args)
  return epoch, TrainState(restored["params"], restored["opt_state"]), restored["meta"]["history"]


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path) -> LeNet:
  """The LeNet of ``config`` with the parameters of ``workdir``'s latest checkpoint."""
  validate_config(config)
  with checkpoint_manager(Path(workdir)) as manager:
    epoch = manager.latest_step()
    if epoch is None:
      raise FileNotFoundError(f"no checkpoint under {Path(workdir) / CHECKPOINT_DIR}")
    meta = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    model = nnx.eval_shape(lambda: create_model(config, tuple(meta["input_shape"])))
    graphdef, params = nnx.split(model, nnx.Param)
    # On this process's first device, whichever devices saved it.
    target = abstract(params, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    restored = manager.restore(epoch, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  return nnx.merge(graphdef, restored["params"])


# --------------------------------------------------------------------------------------------
# the loop


def compile_steps(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, state: TrainState, train: Batch, test: Batch, mesh: Mesh | None = None):
  """Ahead-of-time compiled ``train_steps`` and ``evaluate`` for these shapes, data parallel over ``mesh``.

  ``mesh`` defaults to ``config.mesh.data`` devices. State and metrics are replicated, the data
  and each epoch's ``idx`` (``epoch_batches``) split along their examples.
  """
  mesh = mesh or parallel.make_mesh(config.mesh.data)
  replicated, examples = parallel.sharding(mesh), parallel.sharding(mesh, parallel.DATA_AXIS)
  steps = steps_per_epoch(train.labels.shape[0], config.batch_size, parallel.num_shards(mesh))
  idx = jax.ShapeDtypeStruct((steps, config.batch_size), jnp.int32)
  in_shardings = (replicated, replicated, examples, parallel.sharding(mesh, None, parallel.DATA_AXIS), replicated, replicated)
  # The state is donated: each call updates the parameters and Adam moments in place.
  train_steps = jax.jit(make_train_steps(make_train_step(graphdef, tx, mesh), mesh), in_shardings=in_shardings, out_shardings=replicated, donate_argnums=0)
  train_steps = train_steps.lower(state, zero_metrics(), train, idx, 0, 0).compile()
  evaluate = jax.jit(make_evaluate(graphdef, config.eval_batch_size, mesh), in_shardings=(replicated, examples), out_shardings=replicated)
  return train_steps, evaluate.lower(state.params, test).compile()


def run_epoch(train_steps, state: TrainState, data: Batch, idx: jax.Array, steps_per_call: int, label: str) -> tuple[TrainState, Metrics]:
  """All steps of one epoch in calls of ``steps_per_call`` steps; returns the state and summed metrics."""
  steps = idx.shape[0]
  bar = Progress(steps, label)
  metrics = zero_metrics()
  for start in range(0, steps, steps_per_call):
    previous = metrics
    state, metrics = train_steps(state, metrics, data, idx, start, min(start + steps_per_call, steps))
    # Reading the previous call's sums waits for that call only: the next one is already queued.
    if bar.enabled and start:
      bar.update(start, f"loss {mean_loss(previous):.4f}")
  metrics = jax.device_get(metrics)
  bar.update(steps, f"loss {mean_loss(metrics):.4f}")
  bar.close()
  return state, metrics


def mean_loss(metrics: Metrics) -> float:
  """Mean loss from summed metrics."""
  return float(metrics["loss"]) / max(int(metrics["count"]), 1)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> list[dict]:
  """Train ``config``'s LeNet, resuming from ``workdir``'s checkpoint; returns the metrics of every epoch.

  Data parallel over ``config.mesh.data`` devices (of every process when ``config.distributed``
  is enabled); only process 0 writes metrics, plots and logs.
  """
  validate_config(config)
  parallel.initialize_distributed(config)
  mesh = parallel.make_mesh(config.mesh.data)
  parallel.check_divisible(config.batch_size, "batch_size", mesh)
  parallel.check_divisible(config.eval_batch_size, "eval_batch_size", mesh)
  main = parallel.is_main_process()
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  train_data, test_data = device_data(config, mesh)
  num_train = train_data.labels.shape[0]
  steps = steps_per_epoch(num_train, config.batch_size, parallel.num_shards(mesh))
  input_shape = tuple(train_data.images.shape[1:])
  graphdef, params = nnx.split(create_model(config, input_shape), nnx.Param)
  tx = create_optimizer(config, steps)
  schedule = learning_rate_schedule(config, steps)

  with checkpoint_manager(workdir) as manager:
    done, state, history = restore_checkpoint(manager, parallel.replicate(TrainState(params, tx.init(params)), mesh))
    # The checkpoint is the record of finished epochs: a line appended after it, or one missing
    # because a run was killed between saving and appending, is rewritten from it.
    if main:
      write_metrics(workdir / METRICS_FILE, history)
    if done and main:
      log.info("resuming from %s after epoch %d", workdir, done)
    if done < config.num_epochs:
      start = time.perf_counter()
      train_steps, evaluate = compile_steps(config, graphdef, tx, state, train_data, test_data, mesh)
      compile_seconds = time.perf_counter() - start
    for epoch in range(done + 1, config.num_epochs + 1):
      t0 = time.perf_counter()
      idx = epoch_batches(config.seed, epoch, num_train, config.batch_size, mesh)
      state, train_metrics = run_epoch(train_steps, state, train_data, idx, config.steps_per_call, f"epoch {epoch}/{config.num_epochs}")
      t1 = time.perf_counter()
      test_metrics = jax.device_get(evaluate(state.params, test_data))
      record = {
          "epoch": epoch,
          **summarize(train_metrics, "train"),
          **summarize(test_metrics, "test"),
          "epoch_seconds": t1 - t0,
          "images_per_second": steps * config.batch_size / (t1 - t0),
          "eval_seconds": time.perf_counter() - t1,
          "compile_seconds": compile_seconds,
          "learning_rate": float(schedule(epoch * steps)),
      }
      history.append(record)
      save_checkpoint(manager, epoch, state, {"input_shape": input_shape, "history": history})  # orbax: every process
      if not main:  # the metrics line and the log: process 0 only
        continue
      append_metrics(workdir / METRICS_FILE, record)
      log.info(
          "epoch %d: train loss %.4f acc %.4f, test loss %.4f acc %.4f, %.2fs (%.0f images/s)",
          epoch, record["train_loss"], record["train_accuracy"], record["test_loss"], record["test_accuracy"],
          record["epoch_seconds"], record["images_per_second"],
      )  # fmt: skip
  if history and main:
    plot_curves(history, workdir / CURVES_FILE)
  return history
