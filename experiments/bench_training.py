"""Training speed of jaxconv's modern LeNet against PyTorch eager, side by side in one process.

  python experiments/bench_training.py [--impl NAME ...] [--rounds 3] [--out bench.json]
      [--config configs/lenet_mnist.py]
  python experiments/bench_training.py --time-to-accuracy 0.99 --config configs/lenet_speedrun.py
      [--seeds 0 1 2] [--impl NAME ...] [--out tta.json]

Throughput (the default): both train the same modern LeNet-5 with Adam on full MNIST epochs
(batch 128, shuffled, remainder dropped), alternating round by round so that both see the same
machine load; the table reports the median images/s of each and their ratio per round. jaxconv's
one-off compile time is reported separately. PyTorch is optional (``pip install torch``).

Time to accuracy (``--time-to-accuracy A``): the config's whole recipe (optimiser, schedule, batch
size, label smoothing, augmentation, epochs) in jaxconv and in PyTorch eager from the same initial
weights and the same batches, epochs interleaved; each side's clock runs only while it works and
includes model set-up and compilation (the shared data loading is reported apart). Each stops at
the first epoch whose test accuracy reaches A. A side that does not reach A within the config's
epochs is said to (``reached: false``) and its seconds are those of all its epochs. ``--seeds S ...``
races each seed in turn (``config.seed``: initial weights, batches, augmentation); ``--out`` gets,
per seed, each side's epochs and seconds to A, and ``speedup_vs_torch``: per jaxconv impl, the
median over the seeds of torch's seconds over jaxconv's (seeds where jaxconv missed A are left out
and listed). In the throughput mode ``speedup_vs_torch`` is the median images/s ratio. Both modes
record the machine, the versions, the load and the command (``benchmarks.harness.environment``).
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
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from benchmarks.harness import environment
from experiments import lenet
from experiments.lenet.config import compiler_options
from experiments.lenet.torch_twin import torch_lenet, torch_params
from jaxconv import nn, parallel, training
from jaxconv.training import augment

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", "configs/lenet_mnist.py", "Training configuration (run from the repository root)."
)
flags.DEFINE_multi_string("impl", None, "Kernels to train with (default: the config's model.impl).")
flags.DEFINE_integer("rounds", 3, "Epochs timed per framework, interleaved.")
flags.DEFINE_integer("steps_per_call", 50, "Training steps per compiled call.")
flags.DEFINE_boolean("torch", True, "Also time PyTorch eager (skipped if torch is not installed).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_float(
  "time_to_accuracy", None, "Instead of throughput: seconds until this test accuracy, jaxconv vs torch."
)
flags.DEFINE_alias("time-to-accuracy", "time_to_accuracy")
flags.DEFINE_boolean(
  "float32_baseline",
  True,
  "Throughput with a config whose model.dtype is set (configs/lenet_bf16.py): also time it in float32, interleaved.",
)
flags.DEFINE_list("seeds", None, "Time to accuracy: the seeds to race, one after another (default: the config's).")


def join_list_flag(argv: list[str], name: str = "seeds") -> list[str]:
  """``--seeds 0 1 2`` (space-separated, as argparse would take it) -> ``--seeds=0,1,2`` for absl."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] == f"--{name}":
      values, i = [], i + 1
      while i < len(argv) and not argv[i].startswith("-"):
        values.append(argv[i])
        i += 1
      out.append(f"--{name}={','.join(values)}")
      continue
    out.append(argv[i])
    i += 1
  return out


def bench_config(impl: str | None) -> ml_collections.ConfigDict:
  """The config under test, with the kernel ``impl`` and plain Adam at a constant rate, as torch runs."""
  config = FLAGS.config.copy_and_resolve_references()
  config.model.impl = impl
  config.steps_per_call = FLAGS.steps_per_call
  config.optimizer, config.schedule = "adam", "constant"
  # torch's throughput loop trains without these: keep both sides doing the same work.
  if "label_smoothing" in config:
    config.label_smoothing = 0.0
  if "augment" in config:
    config.augment = augment.config_fields()
  return config


def jax_trainer(config: ml_collections.ConfigDict, mesh, train_data: training.Batch, test_data: training.Batch):
  """A function running one jaxconv training epoch (returns its seconds), and the compile seconds."""
  num_train = train_data.labels.shape[0]
  tx = lenet.create_optimizer(config, training.steps_per_epoch(num_train, config.batch_size, parallel.num_shards(mesh)))
  graphdef, state = training.create_state(lenet.create_model(config, tuple(train_data.images.shape[1:])), tx)
  state = [parallel.replicate(state, mesh)]
  start = time.perf_counter()
  train_steps, _ = training.compile_steps(
    graphdef, tx, state[0], train_data, test_data, config.batch_size, config.eval_batch_size, mesh,
    compiler_options=compiler_options(config),
  )  # fmt: skip
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
  model = torch_lenet()
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


def impls(config: ml_collections.ConfigDict) -> list[str | None]:
  """The kernels to race: ``--impl``, else the config's, with ``None`` named as what it picks (``"auto"``)."""
  return FLAGS.impl or [config.model.impl or nn.default_impl()]


def main(argv: list[str]) -> None:
  """Time the epochs and print the table."""
  del argv
  if FLAGS.time_to_accuracy is not None:
    return time_to_accuracy_main(FLAGS.time_to_accuracy)
  config = bench_config(FLAGS.config.model.impl)
  mesh = parallel.make_mesh(config.mesh.data)
  train_data, test_data = lenet.device_data(config, mesh)
  steps = training.steps_per_epoch(train_data.labels.shape[0], config.batch_size, parallel.num_shards(mesh))
  images_per_epoch = steps * config.batch_size
  runners, results = (
    {},
    {
      "env": environment(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax": jax.__version__,
      "devices": len(mesh.devices.flat),
      "load_average_before": os.getloadavg(),
    },
  )
  dtype = config.model.get("dtype")
  for impl in impls(config):
    variants = {f"jaxconv impl={impl}" + (f" dtype={dtype}" if dtype else ""): dtype}
    if dtype and FLAGS.float32_baseline:
      variants[f"jaxconv impl={impl} dtype=float32"] = None
    for name, variant_dtype in variants.items():
      variant = bench_config(impl)
      if dtype:
        variant.model.dtype = variant_dtype
      runners[name], compile_seconds = jax_trainer(variant, mesh, train_data, test_data)
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
  print(
    f"\nXLA_FLAGS={results['xla_flags']!r}, {results['devices']} {jax.devices()[0].platform} device(s), "
    f"{FLAGS.rounds} interleaved epochs of {images_per_epoch} images, "
    f"load average {results['load_average_before'][0]:.1f} -> {results['load_average_after'][0]:.1f}"
  )
  # Medians, and the best epoch of each: on a shared machine the fastest epoch is the one least
  # disturbed by other work, so best-vs-best is the steadier comparison.
  print(
    f"{'trainer':<28} {'images/s':>10} {'best':>8} {'ms/step':>8} {'compile s':>9} {'vs torch':>9} {'best vs best':>12}"
  )
  for name, secs in seconds.items():
    row = results.setdefault(name, {})
    row["images_per_second"] = [images_per_epoch / s for s in secs]
    median, best = statistics.median(row["images_per_second"]), max(row["images_per_second"])
    ratio_text = f"{'-':>9} {'-':>12}"  # no torch, no ratio (and none in the JSON)
    if torch_name:
      ratio = statistics.median(t / s for s, t in zip(secs, seconds[torch_name]))
      best_ratio = min(seconds[torch_name]) / min(secs)
      row["median_ratio_vs_torch"], row["best_ratio_vs_torch"] = ratio, best_ratio
      ratio_text = f"{ratio:>8.2f}x {best_ratio:>11.2f}x"
    compile_s = row.get("compile_seconds")
    compile_text = "" if compile_s is None else f"{compile_s:.2f}"
    print(
      f"{name:<28} {median:>10.0f} {best:>8.0f} {1e3 * config.batch_size / median:>8.2f} {compile_text:>9} {ratio_text}"
    )
  if torch_name:
    results["speedup_vs_torch"] = {
      n.removeprefix("jaxconv impl="): results[n]["median_ratio_vs_torch"] for n in runners if n != torch_name
    }
  if dtype and FLAGS.float32_baseline:
    # The same kernels in the config's dtype against float32, per interleaved round.
    results["speedup_vs_float32"] = {}
    for impl in impls(config):
      low, base = seconds[f"jaxconv impl={impl} dtype={dtype}"], seconds[f"jaxconv impl={impl} dtype=float32"]
      ratio = statistics.median(b / a for a, b in zip(low, base))
      results["speedup_vs_float32"][str(impl)] = ratio
      print(f"impl={impl}: {dtype} images/s over float32 images/s, median of the rounds: {ratio:.2f}x")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=2)


# --------------------------------------------------------------------------------------------
# time to accuracy: the config's whole recipe, jaxconv against PyTorch eager


class Clock:
  """Seconds accumulated over the stretches between ``start()`` and ``stop()``."""

  def __init__(self):
    self.seconds, self._since = 0.0, None

  def start(self) -> None:
    self._since = time.perf_counter()

  def stop(self) -> float:
    self.seconds += time.perf_counter() - self._since
    return self.seconds


def recipe_fields(config: ml_collections.ConfigDict) -> list[str]:
  """The recipe fields beyond the optimiser and schedule that ``config`` turns on."""
  fields = []
  if config.get("label_smoothing", 0.0):
    fields.append("label_smoothing")
  if any(v for k, v in config.get("augment", {}).items() if k != "fill"):
    fields.append("augment")
  return fields


def jax_speedrun(config: ml_collections.ConfigDict, mesh, train_data: training.Batch, test_data: training.Batch):
  """Yields ``(epoch, test_accuracy, seconds)`` of a jaxconv run of ``config``; seconds include set-up and compile."""
  clock = Clock()
  clock.start()
  num_train = train_data.labels.shape[0]
  steps = training.steps_per_epoch(num_train, config.batch_size, parallel.num_shards(mesh))
  tx = lenet.create_optimizer(config, steps)
  graphdef, state = training.create_state(lenet.create_model(config, tuple(train_data.images.shape[1:])), tx)
  state = parallel.replicate(state, mesh)
  train_steps, evaluate = training.compile_steps(
    graphdef, tx, state, train_data, test_data, config.batch_size, config.eval_batch_size, mesh,
    augmentation=augment.from_config(config.augment), label_smoothing=float(config.label_smoothing),
    compiler_options=compiler_options(config),
  )  # fmt: skip
  yield 0, float("nan"), clock.stop()
  for epoch in range(1, config.num_epochs + 1):
    clock.start()
    idx = training.epoch_batches(config.seed, epoch, num_train, config.batch_size, mesh)
    key = training.epoch_key(config.seed, epoch)
    state, _ = training.run_epoch(train_steps, state, train_data, idx, config.steps_per_call, key=key)
    # With batch statistics in the state (branch "fit"), evaluation takes all the model's variables.
    variables = training.model_variables(state) if hasattr(training, "model_variables") else state.params
    accuracy = training.summarize(jax.device_get(evaluate(variables, test_data)), "test")["test_accuracy"]
    yield epoch, accuracy, clock.stop()


def torch_augment(x, fields: dict, generator):
  """PyTorch twin of ``jaxconv.training.augment.augment`` on x ``(N, C, H, W)``: the same distribution.

  Integer shifts, rotation, zoom and shear drawn as there, applied by one bilinear ``grid_sample``
  with edge replication (``padding_mode="border"``) through the same sampling map.
  """
  import torch

  n = x.shape[0]
  uniform = lambda limit: (torch.rand(n, generator=generator) * 2 - 1) * limit
  shift = float(fields.get("max_shift", 0))
  shifts = torch.randint(-int(shift), int(shift) + 1, (n, 2), generator=generator).float()  # (dy, dx)
  angle = uniform(np.radians(fields.get("max_rotation", 0.0)))
  scale = 1 + uniform(fields.get("max_scale", 0.0))
  shear = torch.tan(uniform(np.radians(fields.get("max_shear", 0.0))))
  cos, sin = torch.cos(angle), torch.sin(angle)
  # The (row, col) sampling matrix of sample_affine, then the shift as an offset after it.
  rc = (
    torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin - shear * cos, cos - shear * sin], -1)], -2)
    / scale[:, None, None]
  )
  return torch_affine(x, rc, -(rc @ shifts[:, :, None])[..., 0])


def torch_affine(x, rc, offset_rc):
  """``jaxconv.training.augment.affine`` (edge fill) in PyTorch.

  x is ``(N, C, H, W)``, rc ``(N, 2, 2)``, offset_rc ``(N, 2)``.
  """
  import torch

  _, _, h, w = x.shape
  # grid_sample works in (x, y) = (col, row), normalised so that -1 and 1 are the edge pixels' centres.
  half = torch.tensor([(w - 1) / 2, (h - 1) / 2])
  xy = rc.flip(1).flip(2) * half[None, None, :] / half[None, :, None]
  theta = torch.cat([xy, (offset_rc.flip(1) / half)[:, :, None]], 2)
  grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=True)
  return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def torch_speedrun(
  config: ml_collections.ConfigDict, params: nnx.State, train_data: training.Batch, test_data: training.Batch
):
  """Yields ``(epoch, test_accuracy, seconds)`` of the same recipe in PyTorch eager: weights, batches, schedule."""
  import torch
  from torch import nn

  num_train, batch = train_data.labels.shape[0], config.batch_size
  steps = training.steps_per_epoch(num_train, batch)
  # optax's own rates, outside torch's clock: the schedule is the recipe, not torch's work.
  rates = np.asarray(
    jax.vmap(lenet.learning_rate_schedule(config, steps))(np.arange(config.num_epochs * steps))
  ).tolist()
  clock = Clock()
  clock.start()
  torch.manual_seed(config.seed)
  generator = torch.Generator().manual_seed(config.seed)
  model = torch_lenet()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in torch_params(params).items()})
  x = torch.from_numpy(np.array(np.asarray(train_data.images).transpose(0, 3, 1, 2), order="C"))  # writable copies
  y = torch.from_numpy(np.asarray(train_data.labels).astype(np.int64))
  test_x = torch.from_numpy(np.array(np.asarray(test_data.images).transpose(0, 3, 1, 2), order="C"))
  test_y = torch.from_numpy(np.asarray(test_data.labels).astype(np.int64))
  if config.optimizer == "adam":
    opt = torch.optim.Adam(model.parameters(), rates[0])
  elif config.optimizer == "adamw":
    opt = torch.optim.AdamW(model.parameters(), rates[0], weight_decay=config.weight_decay)
  else:
    opt = torch.optim.SGD(model.parameters(), rates[0], momentum=config.momentum)
  smoothing = float(config.get("label_smoothing", 0.0))
  fields = dict(config.get("augment", {})) if "augment" in recipe_fields(config) else None
  yield 0, float("nan"), clock.stop()
  for epoch in range(1, config.num_epochs + 1):
    clock.start()
    model.train()
    idx = torch.from_numpy(np.asarray(training.epoch_batches(config.seed, epoch, num_train, batch)).astype(np.int64))
    for i in range(steps):
      for group in opt.param_groups:
        group["lr"] = rates[(epoch - 1) * steps + i]
      images = x[idx[i]]
      if fields:
        images = torch_augment(images, fields, generator)
      opt.zero_grad(set_to_none=True)
      nn.functional.cross_entropy(model(images), y[idx[i]], label_smoothing=smoothing).backward()
      opt.step()
    model.eval()
    with torch.no_grad():
      keep = test_y >= 0  # device_data's padding rows have label -1
      logits = torch.cat([model(test_x[i : i + 1000]) for i in range(0, len(test_y), 1000)])
      accuracy = float((logits.argmax(1) == test_y)[keep].float().mean())
    yield epoch, accuracy, clock.stop()


def race(config: ml_collections.ConfigDict, mesh, train_data, test_data, target: float) -> dict[str, dict]:
  """One seed: epochs of every trainer interleaved until each reaches ``target`` or runs out of epochs.

  Returns:
    Per trainer: ``reached``, ``epochs`` and ``seconds`` (to the target, else over all epochs),
    ``setup_seconds`` and the per-epoch ``curve``.
  """
  runs = {}
  for impl in impls(config):
    impl_config = config.copy_and_resolve_references()
    impl_config.model.impl = impl
    runs[f"jaxconv impl={impl}"] = jax_speedrun(impl_config, mesh, train_data, test_data)
  if FLAGS.torch:
    try:
      import torch

      _, params = nnx.split(lenet.create_model(config, tuple(train_data.images.shape[1:])), nnx.Param)
      runs[f"torch {torch.__version__} eager"] = torch_speedrun(config, params, train_data, test_data)
    except ImportError:
      print("torch is not installed: timing jaxconv only")
  curves: dict[str, list[dict]] = {name: [] for name in runs}
  active = dict(runs)
  while active:
    for name, run in list(active.items()):
      epoch, accuracy, seconds = next(run, (None, None, None))
      if epoch is None:
        del active[name]
        continue
      curves[name].append({"epoch": epoch, "test_accuracy": accuracy, "seconds": seconds})
      if epoch and accuracy >= target:
        del active[name]
  summary = {}
  for name, curve in curves.items():
    last = curve[-1]
    summary[name] = {
      "reached": last["epoch"] > 0 and last["test_accuracy"] >= target,
      "epochs": last["epoch"],
      "seconds": last["seconds"],
      "setup_seconds": curve[0]["seconds"],
      "curve": curve[1:],
    }
  return summary


def seed_speedups(summary: dict[str, dict]) -> dict[str, float | None]:
  """Per jaxconv impl: torch's seconds over jaxconv's for one seed (None where jaxconv missed the target).

  A torch run that missed the target counts with its time over all the config's epochs.
  """
  torch_name = next((n for n in summary if n.startswith("torch")), None)
  if torch_name is None:
    return {}
  t = summary[torch_name]
  return {
    n.removeprefix("jaxconv impl="): (t["seconds"] / r["seconds"] if r["reached"] else None)
    for n, r in summary.items()
    if n != torch_name
  }


def time_to_accuracy_main(target: float) -> None:
  """Race every seed of ``--seeds`` (default: the config's) and report per seed and the median speedup."""
  config = FLAGS.config.copy_and_resolve_references()
  seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else [int(config.seed)]
  mesh = parallel.make_mesh(config.mesh.data)
  start = time.perf_counter()
  train_data, test_data = lenet.device_data(config, mesh)
  results: dict = {
      "target": target, "seeds": seeds, "num_epochs": config.num_epochs, "batch_size": config.batch_size,
      "data_seconds": time.perf_counter() - start, "env": environment(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax": jax.__version__, "devices": len(mesh.devices.flat), "load_average_before": os.getloadavg(),
  }  # fmt: skip
  try:
    import torch

    results["torch_threads"] = torch.get_num_threads()
  except ImportError:
    pass
  per_seed: dict[str, dict] = {}
  for seed in seeds:
    seed_config = config.copy_and_resolve_references()
    seed_config.seed = seed
    summary = race(seed_config, mesh, train_data, test_data, target)
    per_seed[str(seed)] = {"runs": summary, "speedup_vs_torch": seed_speedups(summary)}
    print(
      f"\nseed {seed}: time to {100 * target:.2f}% test accuracy, {config.num_epochs} epochs at most, "
      f"batch {config.batch_size}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'trainer':<28} {'set-up s':>9} {'epochs':>6} {'seconds':>8} {'final acc':>9}  per-epoch accuracy")
    for name, run in summary.items():
      accs = " ".join(f"{100 * c['test_accuracy']:.2f}" for c in run["curve"])
      final = run["curve"][-1]["test_accuracy"] if run["curve"] else float("nan")
      note = "" if run["reached"] else f"  (not reached in {config.num_epochs} epochs: all its epochs counted)"
      print(
        f"{name:<28} {run['setup_seconds']:>9.2f} {run['epochs']:>6} {run['seconds']:>8.1f} "
        f"{100 * final:>8.2f}%  {accs}{note}"
      )
  results["load_average_after"] = os.getloadavg()
  results["per_seed"] = per_seed
  if len(seeds) == 1:
    results["runs"] = per_seed[str(seeds[0])]["runs"]
  ratios: dict[str, list[float]] = {}
  missed: dict[str, list[int]] = {}
  for seed, entry in per_seed.items():
    for impl, ratio in entry["speedup_vs_torch"].items():
      ratios.setdefault(impl, [])
      if ratio is None:
        missed.setdefault(impl, []).append(int(seed))
      else:
        ratios[impl].append(ratio)
  if ratios:
    results["speedup_vs_torch"] = {impl: (statistics.median(r) if r else None) for impl, r in ratios.items()}
    results["speedup_vs_torch_per_seed"] = {
      impl: [per_seed[str(s)]["speedup_vs_torch"][impl] for s in seeds] for impl in ratios
    }
    torch_missed = [
      int(seed) for seed, entry in per_seed.items() for n, r in entry["runs"].items() if n.startswith("torch")
      if not r["reached"]
    ]  # fmt: skip
    results["torch_not_reached_seeds"] = torch_missed
    results["jaxconv_not_reached_seeds"] = missed
    print(f"\nspeedup vs torch, median over seeds {seeds}:", results["speedup_vs_torch"])
    print("per seed:", results["speedup_vs_torch_per_seed"])
    if torch_missed:
      print(f"torch did not reach {100 * target:.2f}% on seeds {torch_missed}: its time over all epochs counts")
    for impl, bad in missed.items():
      print(f"jaxconv impl={impl} did not reach {100 * target:.2f}% on seeds {bad}: left out of its median")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main, argv=join_list_flag(sys.argv))
