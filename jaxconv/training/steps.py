"""Pure step functions of ``(state, batch)``: the training step, a fixed-trip loop of them, evaluation.

Metrics are per-batch sums (``loss``, ``correct``, ``count``), which add across batches and across
the shards of a data-parallel mesh; ``summarize`` turns them into means. The model is a classifier:
``apply(variables, images (B, ...)) -> logits (B, K)`` against integer labels ``(B,)``.

On a mesh of several devices the model runs under ``shard_map``, each device on its own rows (see
``jaxconv.parallel``). Two kinds of state need care there, and ``_make_forward`` gives both:
``nnx.BatchNorm`` layers without an ``axis_name`` get the mesh's axis for the trace, so their batch
statistics are means over the global batch (``lax.pmean``) and stay the same on every device; and
each device draws its dropout masks from its own stream (the model's keys folded with the device's
index, the keys themselves left unchanged), while the streams' counts advance alike everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from jaxconv import parallel
from jaxconv.training import augment
from jaxconv.training.state import Batch, TrainState

Forward = Callable[[nnx.State, nnx.State, jax.Array], tuple[jax.Array, nnx.State]]

__all__ = [
  "Metrics",
  "add_metrics",
  "batch_metrics",
  "make_apply",
  "make_evaluate",
  "make_train_step",
  "make_train_steps",
  "mean_loss",
  "summarize",
  "zero_metrics",
]

Metrics = dict[str, jax.Array]  # per-batch sums: "loss", "correct", "count"
TrainStep = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]


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


def mean_loss(metrics: Metrics) -> float:
  """Mean loss from summed metrics."""
  return float(metrics["loss"]) / max(int(metrics["count"]), 1)


def summarize(metrics: Metrics, prefix: str) -> dict[str, float]:
  """Summed metrics -> ``{prefix_loss, prefix_accuracy}`` means."""
  count = max(int(metrics["count"]), 1)
  return {f"{prefix}_loss": float(metrics["loss"]) / count, f"{prefix}_accuracy": int(metrics["correct"]) / count}


def make_apply(graphdef: nnx.GraphDef, mesh: Mesh | None = None) -> Callable[[nnx.State, jax.Array], jax.Array]:
  """``apply(variables, images) -> logits`` of the model, run by each device of ``mesh`` on its own images.

  ``variables`` is all of the model's state (``state.model_variables``; for a model with parameters
  only, its ``nnx.Param`` state). Whatever the model changes in it (evaluation changes nothing) is dropped.
  """
  return parallel.per_device(lambda variables, images: nnx.merge(graphdef, variables, copy=True)(images), mesh)


def _is_key(x: jax.Array) -> bool:
  """Whether ``x`` is a typed PRNG key array (an ``nnx.RngKey``'s value)."""
  return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _global_batch_norm(model: nnx.Module) -> None:
  """Give each ``nnx.BatchNorm`` of ``model`` without an ``axis_name`` the mesh's: statistics of the global batch."""
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm) and node.axis_name is None:
      node.axis_name = parallel.DATA_AXIS


def _make_forward(graphdef: nnx.GraphDef, mesh: Mesh | None = None) -> Forward:
  """``forward(params, rest, images) -> (logits, rest)``: the training-mode pass and the variables it updated."""

  def forward(params: nnx.State, rest: nnx.State, images: jax.Array) -> tuple[jax.Array, nnx.State]:
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits = model(images)
    return logits, nnx.split(model, nnx.Param, ...)[-1]

  if parallel.num_shards(mesh) == 1:
    return forward

  def per_device(params: nnx.State, rest: nnx.State, images: jax.Array) -> tuple[jax.Array, nnx.State]:
    index = lax.axis_index(parallel.DATA_AXIS)
    own = jax.tree.map(lambda x: jax.random.fold_in(x, index) if _is_key(x) else x, rest)
    model = nnx.merge(graphdef, params, own, copy=True)
    _global_batch_norm(model)  # on this trace's copy only: the graphdef is unchanged
    logits = model(images)
    updated = nnx.split(model, nnx.Param, ...)[-1]
    # The keys go back as they came, so that every device returns the same state.
    return logits, jax.tree.map(lambda new, old: old if _is_key(old) else new, updated, rest)

  spec = PartitionSpec(parallel.DATA_AXIS)
  # check_vma=False, as in parallel.per_device: the kernels' custom VJPs give per-device cotangents.
  return jax.shard_map(
    per_device, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(), spec), out_specs=(spec, PartitionSpec()),
    check_vma=False,
  )  # fmt: skip


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  mesh: Mesh | None = None,
  *,
  augmentation: augment.AugmentConfig | None = None,
  label_smoothing: float = 0.0,
) -> TrainStep:
  """``train_step(state, batch, key) -> (state, metrics)``: augment, forward, loss, grad and Optax update.

  ``augmentation`` (``augment.AugmentConfig``) transforms the batch's images on the device with
  ``key``; the loss is the cross-entropy against labels smoothed by ``label_smoothing``
  (``optax.smooth_labels``). The metrics stay the plain cross-entropy of the (augmented) batch.
  """
  forward = _make_forward(graphdef, mesh)

  def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
    """One optimisation step on ``batch``; metrics are sums over its examples."""
    images = batch.images if augmentation is None else augment.augment(key, batch.images, augmentation)

    # copy=True in forward: NNX lets a variable change only at the trace level that made it.
    def loss_fn(params: nnx.State, rest: nnx.State) -> tuple[jax.Array, tuple[Metrics, nnx.State]]:
      logits, rest = forward(params, rest, images)
      logits = logits.astype(jnp.float32)  # the loss in float32: a bfloat16 log-softmax diverged LeNet
      metrics = batch_metrics(logits, batch.labels)
      if not label_smoothing:
        return metrics["loss"] / batch.labels.shape[0], (metrics, rest)
      targets = optax.smooth_labels(jax.nn.one_hot(batch.labels, logits.shape[-1]), label_smoothing)
      return optax.softmax_cross_entropy(logits, targets).mean(), (metrics, rest)

    grads, (metrics, rest) = jax.grad(loss_fn, has_aux=True)(state.params, state.rest)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, rest), metrics

  return train_step


def make_train_steps(train_step: TrainStep, mesh: Mesh | None = None):
  """``train_steps(state, metrics, data, idx, start, stop, key)``: steps ``start..stop-1`` of ``idx (S, B)``.

  Step ``i`` draws its randomness from ``fold_in(key, i)``: it depends on the epoch's key and the
  step only, so a resumed run replays it.
  """

  def train_steps(
    state: TrainState, metrics: Metrics, data: Batch, idx: jax.Array, start: jax.Array, stop: jax.Array, key: jax.Array
  ):
    """Run ``train_step`` on the batches of rows ``idx[i]`` for ``start <= i < stop``, summing metrics."""

    def body(i: jax.Array, carry: tuple[TrainState, Metrics]) -> tuple[TrainState, Metrics]:
      state, metrics = carry
      batch = parallel.gather_shards(data, idx[i], mesh)
      state, step_metrics = train_step(state, batch, jax.random.fold_in(key, i))
      return state, add_metrics(metrics, step_metrics)

    return lax.fori_loop(start, stop, body, (state, metrics))

  return train_steps


def make_evaluate(graphdef: nnx.GraphDef, batch_size: int, mesh: Mesh | None = None):
  """``evaluate(variables, data) -> metrics`` over all of ``data`` in batches of ``batch_size``.

  ``variables``: all of the model's state (``state.model_variables``); ``graphdef`` should be the
  model's in ``model.eval()`` mode (BatchNorm's running statistics, no dropout).
  """
  shards = parallel.num_shards(mesh)
  apply = make_apply(graphdef, mesh)

  def evaluate(variables: nnx.State, data: Batch) -> Metrics:
    """Summed metrics of the model on every example of ``data`` with a label >= 0 (the last batch is masked)."""
    n = data.labels.shape[0] // shards  # per shard: each batch takes the same rows of every shard
    size = min(batch_size // shards, n)
    batches = math.ceil(n / size)
    rows = jnp.minimum(jnp.arange(batches * size), n - 1).reshape(batches, size)

    def body(totals: Metrics, batch_rows: jax.Array) -> tuple[Metrics, None]:
      batch = parallel.gather_shards(data, jnp.tile(batch_rows, shards), mesh)
      logits = apply(variables, batch.images).astype(jnp.float32)
      in_range = (jnp.arange(size) + batch_rows[0] < n) if batches * size > n else jnp.ones(size, bool)
      valid = jnp.tile(in_range, shards) & (batch.labels >= 0)  # label < 0: the padding of loop.place
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels)
      metrics = {
        "loss": jnp.where(valid, losses, 0.0).sum(),
        "correct": (valid & (logits.argmax(-1) == batch.labels)).sum(),
        "count": valid.sum(dtype=jnp.int32),
      }
      return add_metrics(totals, metrics), None

    return lax.scan(body, zero_metrics(), rows)[0]

  return evaluate
