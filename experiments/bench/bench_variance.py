"""How much a training call's time varies, jaxconv against PyTorch eager, interleaved call by call.

  python experiments/bench/bench_variance.py [--impl auto --impl toeplitz ...] [--calls 40] [--steps 50]

Each trainer runs chunks of ``--steps`` LeNet-5 Adam steps on MNIST (batch 128): for jaxconv one
compiled call of the training loop, for torch the same number of eager steps. The chunks alternate
between trainers, so that all see the same moments of machine load. Per trainer: the median,
spread and coefficient of variation (CV = std / mean) of the ms per step, and the correlation of
its chunk times with every other trainer's. A correlation near 1 means the trainers slow down
together: the machine, not the trainer, is what varies. jaxconv's kernel threads can be set with
the environment (``JAXCONV_ONEDNN_THREADS``, ``OMP_WAIT_POLICY``, ``XLA_FLAGS``), to see whether
the variance is the trainer's own.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from configs import lenet_mnist
from experiments import lenet
from jaxconv import training
from jaxconv.models import LeNet

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("impl", None, "jaxconv kernels (default: auto).")
flags.DEFINE_integer("calls", 40, "Timed chunks per trainer.")
flags.DEFINE_integer("steps", 50, "Training steps per chunk.")
flags.DEFINE_boolean("torch", True, "Also time PyTorch eager (skipped if torch is not installed).")


def jax_chunk(impl: str, data: training.Batch, steps: int, batch: int) -> Callable[[int], float]:
  """``run(i)``: chunk ``i`` of ``steps`` jaxconv steps as one compiled call; returns its seconds."""
  tx = optax.adam(1e-3)
  graphdef, state = training.create_state(LeNet(impl=impl, rngs=nnx.Rngs(0)), tx)
  train_steps = jax.jit(training.make_train_steps(training.make_train_step(graphdef, tx)))
  chunks = data.labels.shape[0] // (steps * batch)
  idx = jnp.arange(chunks * steps * batch).reshape(chunks * steps, batch)
  holder = [state]

  def run(i: int) -> float:
    start_step = jnp.asarray((i % chunks) * steps)
    start = time.perf_counter()
    holder[0], metrics = train_steps(
      holder[0], training.zero_metrics(), data, idx, start_step, start_step + steps, jax.random.key(i)
    )
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  return run


def torch_chunk(images: np.ndarray, labels: np.ndarray, steps: int, batch: int) -> Callable[[int], float]:
  """``run(i)``: chunk ``i`` of ``steps`` PyTorch eager steps of the same LeNet and Adam; returns its seconds."""
  import torch
  from torch import nn

  from experiments.lenet.torch_twin import torch_lenet

  torch.manual_seed(0)
  model = torch_lenet()
  opt = torch.optim.Adam(model.parameters(), 1e-3)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(labels.astype(np.int64))
  chunks = len(y) // (steps * batch)

  def run(i: int) -> float:
    first = (i % chunks) * steps
    start = time.perf_counter()
    for s in range(first, first + steps):
      opt.zero_grad(set_to_none=True)
      nn.functional.cross_entropy(model(x[s * batch : (s + 1) * batch]), y[s * batch : (s + 1) * batch]).backward()
      opt.step()
    return time.perf_counter() - start

  return run


def main(argv: list[str]) -> None:
  """Alternate the trainers' chunks and print each one's spread and their correlations."""
  del argv
  config = lenet_mnist.get_config()
  train, _ = lenet.device_data(config)
  batch = config.batch_size
  runners = {f"jaxconv {impl}": jax_chunk(impl, train, FLAGS.steps, batch) for impl in FLAGS.impl or ["auto"]}
  if FLAGS.torch:
    try:
      import torch

      runners[f"torch {torch.__version__} ({torch.get_num_threads()} threads)"] = torch_chunk(
        np.asarray(train.images), np.asarray(train.labels), FLAGS.steps, batch
      )
    except ImportError:
      print("torch is not installed: timing jaxconv only")
  for run in runners.values():  # compile, first-touch allocations
    run(0), run(1)
  load = os.getloadavg()[0]
  ms = {name: [] for name in runners}
  for i in range(FLAGS.calls):
    for name, run in runners.items():
      ms[name].append(1e3 * run(i) / FLAGS.steps)
  print(
    f"\n{FLAGS.calls} interleaved chunks of {FLAGS.steps} steps (batch {batch}), ms per step; load average "
    f"{load:.1f} -> {os.getloadavg()[0]:.1f}; JAXCONV_ONEDNN_THREADS={os.environ.get('JAXCONV_ONEDNN_THREADS', '')!r} "
    f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )
  names = list(ms)
  header = f"{'trainer':<34} {'median':>7} {'min':>7} {'max':>7} {'CV':>6}  "
  print(header + "  ".join(f"r({i})" for i in range(len(names))))
  for i, name in enumerate(names):
    t = ms[name]
    corr = [np.corrcoef(t, ms[other])[0, 1] for other in names]
    print(
      f"({i}) {name:<30} {statistics.median(t):7.2f} {min(t):7.2f} {max(t):7.2f} "
      f"{statistics.pstdev(t) / statistics.mean(t):6.3f}  " + "  ".join(f"{c:4.2f}" for c in corr)
    )


if __name__ == "__main__":
  app.run(main)
