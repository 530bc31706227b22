"""Pure step functions of ``(state, batch)``: the training step, a fixed-trip loop of them, evaluation.

Metrics are per-batch sums (``loss``, ``correct``, ``count``), which add across batches and across
the shards of a data-parallel mesh; ``summarize`` turns them into means. The model is a classifier:
``apply(params, images (B, ...)) -> logits (B, K)`` against integer labels ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh

from jaxconv import parallel
from jaxconv.training import augment
from jaxconv.training.state import Batch, TrainState

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
  """``apply(params, images) -> logits`` of the model, run by each device of ``mesh`` on its own images."""
  return parallel.per_device(lambda params, images: nnx.merge(graphdef, params)(images), mesh)


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
  apply = make_apply(graphdef, mesh)

  def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
    """One optimisation step on ``batch``; metrics are sums over its examples."""
    images = batch.images if augmentation is None else augment.augment(key, batch.images, augmentation)

    def loss_fn(params: nnx.State) -> tuple[jax.Array, Metrics]:
      logits = apply(params, images)
      metrics = batch_metrics(logits, batch.labels)
      if not label_smoothing:
        return metrics["loss"] / batch.labels.shape[0], metrics
      targets = optax.smooth_labels(jax.nn.one_hot(batch.labels, logits.shape[-1]), label_smoothing)
      return optax.softmax_cross_entropy(logits, targets).mean(), metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), metrics

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
