"""The Flax drop-in inside a data-parallel ``jax.jit`` train step: 2 forced CPU devices against 1.

A LeNet-sized CNN of ``flax.nnx.Conv(..., conv_general_dilated=functools.partial(
jaxconv.conv_general_dilated, impl=IMPL))`` layers and ``jc.max_pool``, trained by Adam on
random MNIST-shaped batches. The same step is compiled twice in one process: on one device, and
on a 1-D mesh of 2 devices with the batch sharded (a ``NamedSharding``, parameters replicated;
Auto or Explicit axes, inside ``jax.set_mesh``). It checks that both give the same parameters,
prints the collectives of the sharded step, and times both (median ms per step of interleaved
rounds). On a machine whose cores the 2 devices share, this shows correctness more than speed-up.

    python experiments/bench/bench_sharded_step.py [--impl auto] [--axes auto|explicit] [--batch 128] [--steps 20]

It sets ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` itself when JAX is not yet imported.
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import functools
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxconv
import jaxconv as jc

COLLECTIVES = r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("


class CNN(nnx.Module):
  """LeNet-5 (modern) with Flax's own layers and jaxconv's convolutions: ``(N, 28, 28, 1)`` -> logits ``(N, 10)``."""

  def __init__(self, impl: str, rngs: nnx.Rngs):
    cgd = functools.partial(jaxconv.conv_general_dilated, impl=impl)
    self.conv1 = nnx.Conv(1, 6, (5, 5), padding="SAME", conv_general_dilated=cgd, rngs=rngs)
    self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", conv_general_dilated=cgd, rngs=rngs)
    self.fc1, self.fc2 = nnx.Linear(16 * 5 * 5, 120, rngs=rngs), nnx.Linear(120, 84, rngs=rngs)
    self.out = nnx.Linear(84, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jc.max_pool(nnx.relu(self.conv1(x)), 2)
    y = jc.max_pool(nnx.relu(self.conv2(y)), 2)
    y = y.reshape(y.shape[0], -1)
    return self.out(nnx.relu(self.fc2(nnx.relu(self.fc1(y)))))


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation) -> Callable:
  """``(params, opt_state, images, labels) -> (params, opt_state, loss)``: one Adam step on the batch's mean loss."""

  def step(params: Any, opt_state: Any, images: jax.Array, labels: jax.Array):
    def loss_fn(params: Any) -> jax.Array:
      logits = nnx.merge(graphdef, params)(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def time_steps(step: Callable, args: tuple, steps: int) -> float:
  """Seconds per step over ``steps`` steps (the state carried from step to step)."""
  params, opt_state, images, labels = args
  start = time.perf_counter()
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state, images, labels)
  jax.block_until_ready(loss)
  return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
  parser.add_argument("--impl", default="auto", help="jaxconv kernel for the convolutions (default: auto)")
  parser.add_argument("--axes", choices=("auto", "explicit"), default="auto", help="mesh axis type")
  parser.add_argument("--batch", type=int, default=128, help="global batch (a multiple of 2)")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
  args = parser.parse_args(argv)
  if jax.device_count() < 2:
    raise SystemExit(f"needs 2 devices, JAX sees {jax.device_count()} (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")
  if args.batch % 2:
    raise SystemExit(f"--batch must be a multiple of the 2 devices; got {args.batch}")

  rng = np.random.default_rng(0)
  images = rng.standard_normal((args.batch, 28, 28, 1)).astype(np.float32)
  labels = rng.integers(0, 10, args.batch).astype(np.int32)
  graphdef, params = nnx.split(CNN(args.impl, nnx.Rngs(0)))
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  step = make_step(graphdef, tx)

  one = jax.jit(step)
  one_args = (params, opt_state, jnp.asarray(images), jnp.asarray(labels))
  kind = AxisType.Auto if args.axes == "auto" else AxisType.Explicit
  mesh = jax.make_mesh((2,), ("data",), axis_types=(kind,))
  with jax.set_mesh(mesh):
    rows, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    two_args = (
      jax.device_put(params, whole),
      jax.device_put(opt_state, whole),
      jax.device_put(images, rows),
      jax.device_put(labels, rows),
    )
    two = jax.jit(step).lower(*two_args).compile()
    collectives = sorted(set(re.findall(COLLECTIVES, two.as_text())))
    got = two(*two_args)
  want = one(*one_args)
  diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(want[0]), jax.tree.leaves(got[0])))

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(f"jax {jax.__version__}, {jax.device_count()} forced CPU devices sharing {cores} cores, load {os.getloadavg()}")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; impl={args.impl!r}, {args.axes} axes, batch {args.batch}")
  print(f"one step, 1 device vs 2: max |param difference| {diff:.2e}; sharded step collectives: {collectives}")
  print(f"batch sharding of the step's input: {two_args[2].sharding.spec}")

  times: dict[str, list[float]] = {"1 device": [], "2 devices": []}
  time_steps(one, one_args, 2)  # warm-up (compiled above for the mesh)
  with jax.set_mesh(mesh):
    time_steps(two, two_args, 2)
  for _ in range(args.rounds):
    times["1 device"].append(time_steps(one, one_args, args.steps))
    with jax.set_mesh(mesh):
      times["2 devices"].append(time_steps(two, two_args, args.steps))
  medians = {name: statistics.median(ts) for name, ts in times.items()}
  for name, seconds in medians.items():
    print(f"{name:>9}: {seconds * 1e3:7.2f} ms/step ({args.batch / seconds:,.0f} images/s)")
  print(f"ratio 1-device time / 2-device time: {medians['1 device'] / medians['2 devices']:.2f}x")


if __name__ == "__main__":
  main()
