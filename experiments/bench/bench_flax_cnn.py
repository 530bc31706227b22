"""Flax's MNIST-example CNN trained with Flax's default convolution and with the jaxconv drop-in.

  python experiments/bench/bench_flax_cnn.py [--impl auto ...] [--rounds 3] [--out bench.json]
      [--train_size N] [--test_size N] [--steps_per_call 1]

The model is the CNN of Flax's MNIST example (conv 3x3 32 -> relu -> avg_pool 2x2 -> conv 3x3 64
-> relu -> avg_pool 2x2 -> flatten -> dense 256 -> relu -> dense 10), written here in NNX with
``nnx.Conv`` and ``nnx.avg_pool``, trained as that example trains it: SGD with momentum 0.9,
learning rate 0.1, batch 128, softmax cross-entropy, on the bundled MNIST. The only difference
between the trainers is the one keyword of ``nnx.Conv``::

    nnx.Conv(..., conv_general_dilated=functools.partial(jaxconv.conv_general_dilated, impl=impl))

Every trainer starts from the same parameters and sees the same batches (gathered on device from
the uint8 images); by default one jitted step (``nnx.split``/``merge`` around ``jax.jit``) runs per
batch, as Flax's example trains. ``--steps_per_call N`` scans N steps per call instead, but that is
no fair baseline on XLA:CPU (jax 0.10.2): there XLA's own convolutions ran ~9x slower inside the
scan (3.6 s against 0.4 s of CPU per step of this CNN, measured on a loaded 2-core machine), while
jaxconv's GEMM kernels did not slow down, which would flatter the drop-in. Epochs are interleaved
trainer by trainer, round by round, so that all see the same machine load; the table gives each
trainer's median and best images/s and its ratio to Flax's default (median of the per-round ratios,
and best epoch against best epoch). Compile time is reported separately, and the test accuracy
after the last round shows that the trainers learn the same thing.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from jax import lax

import jaxconv
from jaxconv.data import load_mnist

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("impl", None, "jaxconv kernels to time against Flax's default convolution (default: auto).")
flags.DEFINE_integer("rounds", 3, "Epochs timed per trainer, interleaved.")
flags.DEFINE_integer("train_size", None, "Train on the first N images only (a smoke test); default all 60000.")
flags.DEFINE_integer("test_size", None, "Evaluate on the first N test images only; default all 10000.")
flags.DEFINE_integer("batch_size", 128, "Batch size (Flax's MNIST example: 128).")
flags.DEFINE_float("learning_rate", 0.1, "SGD learning rate (Flax's MNIST example: 0.1).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum (Flax's MNIST example: 0.9).")
flags.DEFINE_integer(
  "steps_per_call", 1, "At most this many training steps per compiled call (> 1: a lax.scan; see above)."
)
flags.DEFINE_integer("seed", 0, "Parameter and shuffling seed (the same for every trainer).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")

DEFAULT_NAME = "flax default (lax)"


class CNN(nnx.Module):
  """The CNN of Flax's MNIST example; ``conv`` is passed to both ``nnx.Conv`` as ``conv_general_dilated``.

  x: ``(N, 28, 28, 1)`` -> logits ``(N, 10)``.
  """

  def __init__(self, conv: Callable = lax.conv_general_dilated, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), conv_general_dilated=conv, rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), conv_general_dilated=conv, rngs=rngs)
    self.linear1 = nnx.Linear(7 * 7 * 64, 256, rngs=rngs)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.avg_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.linear2(nnx.relu(self.linear1(x)))


def conv_for(impl: str | None) -> Callable:
  """Flax's default convolution (None) or the jaxconv drop-in running kernel ``impl``."""
  return lax.conv_general_dilated if impl is None else functools.partial(jaxconv.conv_general_dilated, impl=impl)


def largest_divisor_at_most(n: int, limit: int) -> int:
  """The largest divisor of ``n`` that is <= ``limit`` (so that every compiled call has one shape)."""
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class Trainer:
  """One model + SGD state; ``epoch(order)`` trains one epoch on the device-resident images."""

  def __init__(self, impl: str | None, images: jax.Array, labels: jax.Array, steps_per_call: int):
    self.impl = impl
    self.images, self.labels = images, labels
    self.graphdef, params = nnx.split(CNN(conv_for(impl), rngs=nnx.Rngs(FLAGS.seed)), nnx.Param)
    self.tx = optax.sgd(FLAGS.learning_rate, FLAGS.momentum)
    self.state = (params, self.tx.init(params))
    self.steps_per_call = steps_per_call
    start = time.perf_counter()
    chunk = jax.ShapeDtypeStruct((steps_per_call, FLAGS.batch_size), jnp.int32)
    self.train_chunk = jax.jit(self._train_chunk, donate_argnums=0).lower(self.state, images, labels, chunk).compile()
    self.compile_seconds = time.perf_counter() - start
    self.losses: list[float] = []

  def _loss(self, params, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = nnx.merge(self.graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def _train_chunk(self, state, images: jax.Array, labels: jax.Array, idx: jax.Array):
    """``idx.shape[0]`` SGD steps, batch ``i`` made of the rows ``idx[i]``; returns the new state and mean loss."""

    def step(state, rows):
      params, opt_state = state
      x = images[rows].astype(jnp.float32) / 255.0
      loss, grads = jax.value_and_grad(self._loss)(params, x, labels[rows])
      updates, opt_state = self.tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    if idx.shape[0] == 1:  # one plain step per call, as Flax training loops are written
      return step(state, idx[0])
    state, losses = lax.scan(step, state, idx)
    return state, losses.mean()

  def epoch(self, order: np.ndarray) -> float:
    """Train on batches ``order`` ``(steps, batch)`` (a multiple of steps_per_call); returns the seconds."""
    chunks = [jax.device_put(c) for c in order.reshape(-1, self.steps_per_call, order.shape[1])]
    jax.block_until_ready(chunks)
    start = time.perf_counter()
    losses = []
    for idx in chunks:
      self.state, loss = self.train_chunk(self.state, self.images, self.labels, idx)
      losses.append(loss)
    jax.block_until_ready(self.state)
    seconds = time.perf_counter() - start
    self.losses.append(float(np.mean(jax.device_get(losses))))
    return seconds

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    model = nnx.merge(self.graphdef, self.state[0])
    predict = nnx.jit(lambda m, x: jnp.argmax(m(x.astype(jnp.float32) / 255.0), -1))
    hits = sum(
      int(jnp.sum(predict(model, images[i : i + 1000]) == labels[i : i + 1000])) for i in range(0, len(labels), 1000)
    )
    return hits / len(labels)


def main(argv: list[str]) -> None:
  del argv
  images, labels = load_mnist(split="train")
  test_images, test_labels = load_mnist(split="test")
  images, labels = images[: FLAGS.train_size], labels[: FLAGS.train_size]
  test_images, test_labels = test_images[: FLAGS.test_size], test_labels[: FLAGS.test_size]
  steps = len(labels) // FLAGS.batch_size  # the remainder is dropped, as in Flax's example
  if steps < 1:
    raise ValueError(f"train_size={FLAGS.train_size} is smaller than one batch of {FLAGS.batch_size}")
  per_call = largest_divisor_at_most(steps, FLAGS.steps_per_call)
  images_per_epoch = steps * FLAGS.batch_size
  device_images, device_labels = jax.device_put(images), jax.device_put(labels)  # uint8 on device, scaled per batch

  results = {
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "images_per_epoch": images_per_epoch,
    "batch_size": FLAGS.batch_size,
    "steps_per_call": per_call,
    "load_average_before": os.getloadavg(),
    "trainers": {},
  }
  trainers = {DEFAULT_NAME: Trainer(None, device_images, device_labels, per_call)}
  for impl in FLAGS.impl or ["auto"]:
    trainers[f"jaxconv impl={impl}"] = Trainer(impl, device_images, device_labels, per_call)
  rng = np.random.default_rng(FLAGS.seed)
  orders = [
    rng.permutation(len(labels))[:images_per_epoch].reshape(steps, FLAGS.batch_size).astype(np.int32)
    for _ in range(FLAGS.rounds + 1)
  ]
  seconds: dict[str, list[float]] = {name: [] for name in trainers}
  for trainer in trainers.values():  # warm-up epoch (not timed): first-run allocations
    trainer.epoch(orders[0])
  for order in orders[1:]:
    for name, trainer in trainers.items():
      seconds[name].append(trainer.epoch(order))
  results["load_average_after"] = os.getloadavg()

  print(
    f"\nFlax MNIST-example CNN, SGD(lr={FLAGS.learning_rate}, momentum={FLAGS.momentum}), batch {FLAGS.batch_size}, "
    f"{FLAGS.rounds} interleaved epochs of {images_per_epoch} images, {per_call} steps per call; "
    f"{jax.default_backend()}, XLA_FLAGS={results['xla_flags']!r}, "
    f"load average {results['load_average_before'][0]:.1f} -> {results['load_average_after'][0]:.1f}"
  )
  print(
    f"{'trainer':<26} {'images/s':>9} {'best':>8} {'ms/step':>8} {'compile s':>9} "
    f"{'vs flax':>8} {'best/best':>9} {'loss':>7} {'test acc':>8}"
  )
  base = seconds[DEFAULT_NAME]
  for name, trainer in trainers.items():
    secs = seconds[name]
    rates = [images_per_epoch / s for s in secs]
    row = {
      "impl": trainer.impl,
      "images_per_second": rates,
      "median_images_per_second": statistics.median(rates),
      "best_images_per_second": max(rates),
      "median_ratio_vs_flax": statistics.median(b / s for s, b in zip(secs, base)),
      "best_ratio_vs_flax": min(base) / min(secs),
      "compile_seconds": trainer.compile_seconds,
      "train_loss_per_epoch": trainer.losses,
      "test_accuracy": trainer.accuracy(test_images, test_labels),
    }
    results["trainers"][name] = row
    print(
      f"{name:<26} {row['median_images_per_second']:>9.0f} {row['best_images_per_second']:>8.0f} "
      f"{1e3 * FLAGS.batch_size / row['median_images_per_second']:>8.2f} {row['compile_seconds']:>9.2f} "
      f"{row['median_ratio_vs_flax']:>7.2f}x {row['best_ratio_vs_flax']:>8.2f}x "
      f"{trainer.losses[-1]:>7.4f} {row['test_accuracy']:>8.4f}"
    )
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=2)


def underscored(arg: str) -> str:
  """``--train-size=5`` -> ``--train_size=5``: hyphenated flag names are accepted too (absl wants underscores)."""
  if not arg.startswith("--"):
    return arg
  name, eq, value = arg[2:].partition("=")
  return "--" + name.replace("-", "_") + eq + value


if __name__ == "__main__":
  sys.argv = [underscored(a) for a in sys.argv]
  app.run(main)
