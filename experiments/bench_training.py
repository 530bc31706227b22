"""Training speed of jaxconv's modern LeNet against PyTorch eager, side by side in one process.

  python experiments/bench_training.py [--impl NAME ...] [--rounds 3] [--out bench.json]
      [--config configs/lenet_mnist.py]

Both train the same modern LeNet-5 with Adam on full MNIST epochs (batch 128, shuffled,
remainder dropped), alternating round by round so that both see the same machine load; the
table reports the median images/s of each and their ratio per round. jaxconv's one-off
compile time is reported separately. PyTorch is optional (``pip install torch``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: experiments.lenet, configs

import jax
import numpy as np
from absl import app, flags

import ml_collections
from ml_collections import config_flags

from experiments import lenet
from jaxconv import parallel, training

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/lenet_mnist.py", "Training configuration (run from the repository root).")
flags.DEFINE_multi_string("impl", None, "Kernels to train with (default: the config's model.impl).")
flags.DEFINE_integer("rounds", 3, "Epochs timed per framework, interleaved.")
flags.DEFINE_integer("steps_per_call", 50, "Training steps per compiled call.")
flags.DEFINE_boolean("torch", True, "Also time PyTorch eager (skipped if torch is not installed).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")


def bench_config(impl: str | None) -> ml_collections.ConfigDict:
  """The config under test, with the kernel ``impl`` and plain Adam at a constant rate, as torch runs."""
  config = FLAGS.config.copy_and_resolve_references()
  config.model.impl = impl
  config.steps_per_call = FLAGS.steps_per_call
  config.optimizer, config.schedule = "adam", "constant"
  return config


def jax_trainer(config: ml_collections.ConfigDict, mesh, train_data: training.Batch, test_data: training.Batch):
  """A function running one jaxconv training epoch (returns its seconds), and the compile seconds."""
  num_train = train_data.labels.shape[0]
  tx = lenet.create_optimizer(config, training.steps_per_epoch(num_train, config.batch_size, parallel.num_shards(mesh)))
  graphdef, state = training.create_state(lenet.create_model(config, tuple(train_data.images.shape[1:])), tx)
  state = [parallel.replicate(state, mesh)]
  start = time.perf_counter()
  train_steps, _ = training.compile_steps(graphdef, tx, state[0], train_data, test_data, config.batch_size, config.eval_batch_size, mesh)
  compile_seconds = time.perf_counter() - start
  epoch = [0]

  def run() -> float:
    epoch[0] += 1
    idx = training.epoch_batches(config.seed, epoch[0], num_train, config.batch_size, mesh)
    idx.block_until_ready()
    start = time.perf_counter()
    state[0], _ = training.run_epoch(train_steps, state[0], train_data, idx, config.steps_per_call)
    return time.perf_counter() - start

  return run, compile_seconds


def torch_trainer(images: np.ndarray, labels: np.ndarray, batch_size: int = 128, lr: float = 1e-3):
  """A function running one PyTorch eager epoch of the same LeNet with Adam (returns its seconds)."""
  import torch
  from torch import nn

  torch.manual_seed(0)
  model = nn.Sequential(
      nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
      nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
  )  # fmt: skip
  opt = torch.optim.Adam(model.parameters(), lr)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(labels.astype(np.int64))
  steps = len(y) // batch_size

  def run() -> float:
    perm = torch.randperm(len(y))
    start = time.perf_counter()
    for i in range(steps):
      rows = perm[i * batch_size : (i + 1) * batch_size]
      opt.zero_grad(set_to_none=True)
      loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
      loss.backward()
      opt.step()
    return time.perf_counter() - start

  return run, torch.__version__, torch.get_num_threads()


def main(argv: list[str]) -> None:
  """Time the epochs and print the table."""
  del argv
  config = bench_config(FLAGS.config.model.impl)
  mesh = parallel.make_mesh(config.mesh.data)
  train_data, test_data = lenet.device_data(config, mesh)
  steps = training.steps_per_epoch(train_data.labels.shape[0], config.batch_size, parallel.num_shards(mesh))
  images_per_epoch = steps * config.batch_size
  runners, results = {}, {"xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__, "devices": len(mesh.devices.flat), "load_average_before": os.getloadavg()}
  for impl in FLAGS.impl or [config.model.impl]:
    name = f"jaxconv impl={impl}"
    runners[name], compile_seconds = jax_trainer(bench_config(impl), mesh, train_data, test_data)
    results[name] = {"compile_seconds": compile_seconds}
  if FLAGS.torch:
    try:
      images, labels = np.asarray(train_data.images), np.asarray(train_data.labels)  # the same normalised arrays
      run, version, threads = torch_trainer(images, labels, config.batch_size, config.learning_rate)
      runners[f"torch {version} eager"] = run
      results["torch_threads"] = threads
    except ImportError:
      print("torch is not installed: timing jaxconv only")
  seconds = {name: [] for name in runners}
  for run in runners.values():  # warm-up: first-epoch allocations, torch's lazy init
    run()
  for _ in range(FLAGS.rounds):
    for name, run in runners.items():
      seconds[name].append(run())
  results["load_average_after"] = os.getloadavg()
  torch_name = next((n for n in runners if n.startswith("torch")), None)
  print(f"\nXLA_FLAGS={results['xla_flags']!r}, {results['devices']} {jax.devices()[0].platform} device(s), "
        f"{FLAGS.rounds} interleaved epochs of {images_per_epoch} images, load average {results['load_average_before'][0]:.1f} -> {results['load_average_after'][0]:.1f}")
  # Medians, and the best epoch of each: on a shared machine the fastest epoch is the one least
  # disturbed by other work, so best-vs-best is the steadier comparison.
  print(f"{'trainer':<28} {'images/s':>10} {'best':>8} {'ms/step':>8} {'compile s':>9} {'vs torch':>9} {'best vs best':>12}")
  for name, secs in seconds.items():
    row = results.setdefault(name, {})
    row["images_per_second"] = [images_per_epoch / s for s in secs]
    median, best = statistics.median(row["images_per_second"]), max(row["images_per_second"])
    ratio = statistics.median(t / s for s, t in zip(secs, seconds[torch_name])) if torch_name else float("nan")
    best_ratio = min(seconds[torch_name]) / min(secs) if torch_name else float("nan")
    row["median_ratio_vs_torch"], row["best_ratio_vs_torch"] = ratio, best_ratio
    compile_s = row.get("compile_seconds")
    compile_text = "" if compile_s is None else f"{compile_s:.2f}"
    print(f"{name:<28} {median:>10.0f} {best:>8.0f} {1e3 * config.batch_size / median:>8.2f} {compile_text:>9} {ratio:>8.2f}x {best_ratio:>11.2f}x")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
