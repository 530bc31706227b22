"""Data-parallel training speed: images/s of LeNet training epochs on 1, 2, 4, ... devices.

  python experiments/bench/bench_parallel.py [--devices 1 2 4] [--rounds 2] [--epochs 3]
      [--train_size 12800] [--batch_size 128] [--config configs/lenet_mnist.py] [--out bench.json]

Each measurement is a ``train_lenet.py`` run in its own process with ``--config.mesh.data=D`` and,
on the CPU, ``D`` forced host devices (``--xla_force_host_platform_device_count``); the first
epoch is a warm-up, the others are timed (``images_per_second`` of ``metrics.jsonl``, steps only).
The device counts are run in turn, ``--rounds`` times, so that all see the same machine load.
Forced CPU devices share the machine's cores: the table shows the cost of splitting a batch
there, not the speed-up of real accelerators.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/lenet_mnist.py", "Training configuration (run from the repository root).")
flags.DEFINE_list("devices", ["1", "2", "4"], "Device counts (config.mesh.data) to time.")
flags.DEFINE_integer("rounds", 2, "Runs per device count, interleaved.")
flags.DEFINE_integer("epochs", 3, "Epochs per run; the first is a warm-up.")
flags.DEFINE_integer("train_size", 12800, "Training images per epoch (config.data.train_size).")
flags.DEFINE_integer("test_size", 1000, "Test images evaluated after each epoch (config.data.test_size).")
flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the config's); must divide by every device count.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")

ROOT = Path(__file__).resolve().parents[2]


def run(devices: int) -> list[dict]:
  """The ``metrics.jsonl`` records of one training run on ``devices`` devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
  overrides = [
    f"--config.mesh.data={devices}",
    f"--config.num_epochs={FLAGS.epochs}",
    f"--config.data.train_size={FLAGS.train_size}",
    f"--config.data.test_size={FLAGS.test_size}",
    "--config.warmup_epochs=0",
  ]
  if FLAGS.batch_size:
    overrides.append(f"--config.batch_size={FLAGS.batch_size}")
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "experiments/train_lenet.py", f"--config={FLAGS.config}", *overrides, f"--workdir={workdir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str]) -> None:
  """Time the runs and print the table."""
  del argv
  counts = [int(d) for d in FLAGS.devices]
  speeds: dict[int, list[float]] = {d: [] for d in counts}
  compile_seconds: dict[int, list[float]] = {d: [] for d in counts}
  for _ in range(FLAGS.rounds):
    for devices in counts:
      records = run(devices)
      speeds[devices] += [r["images_per_second"] for r in records[1:]]
      compile_seconds[devices].append(records[0]["compile_seconds"])
  base = statistics.median(speeds[counts[0]])
  print(
    f"\nXLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {FLAGS.config}, {FLAGS.train_size} images/epoch, "
    f"batch {FLAGS.batch_size or 'of the config'}, {FLAGS.rounds} x {FLAGS.epochs - 1} timed epochs per device count"
  )
  print(f"{'devices':>7} {'images/s':>10} {'min..max':>15} {f'vs {counts[0]}':>7} {'compile s':>9}")
  for devices in counts:
    median = statistics.median(speeds[devices])
    spread = f"{min(speeds[devices]):.0f}..{max(speeds[devices]):.0f}"
    print(
      f"{devices:>7} {median:>10.0f} {spread:>15} {median / base:>6.2f}x "
      f"{statistics.median(compile_seconds[devices]):>9.2f}"
    )
  if FLAGS.out:
    Path(FLAGS.out).write_text(
      json.dumps(
        {"xla_flags": os.environ.get("XLA_FLAGS", ""), "images_per_second": speeds, "compile_seconds": compile_seconds},
        indent=2,
      )
    )


if __name__ == "__main__":
  app.run(main)
