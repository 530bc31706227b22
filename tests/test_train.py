"""jaxconv.training and the LeNet program (experiments/lenet): config validation, batching, a smoke run
that learns, exact resume after kills."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import default
from experiments import lenet
from experiments.lenet.config import compiler_options
from jaxconv import parallel, training
from jaxconv.data import load_mnist
from jaxconv.models import LeNet

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.py"
TIMINGS = ("epoch_seconds", "images_per_second", "eval_seconds", "compile_seconds", "elapsed_seconds")


def load_config(path: Path) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file."""
  namespace: dict = {}
  exec(compile(path.read_text(), str(path), "exec"), namespace)
  return namespace["get_config"]()


def read_metrics(workdir: Path) -> list[dict]:
  """The records of ``workdir/metrics.jsonl``."""
  return [json.loads(line) for line in (workdir / lenet.METRICS_FILE).read_text().splitlines()]


def without_timings(records: list[dict]) -> list[dict]:
  """``records`` without their wall-clock fields."""
  return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


@pytest.mark.parametrize("name", ["lenet_mnist.py", "lenet_classic.py", "smoke.py"])
def test_shipped_configs_are_valid(name):
  lenet.validate_config(load_config(ROOT / "configs" / name))


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("data.source", "csv", r"config.data.source must be one of \('idx', 'tfds'\); got 'csv'"),
    ("data.dir", "/nonexistent", "config.data.dir must be a directory"),
    ("model.variant", "vintage", "config.model.variant must be one of"),
    ("model.impl", "nope", "config.model.impl must be None or one of"),
    ("num_epochs", 0, "config.num_epochs must be a positive int; got 0"),
    ("eval_batch_size", 0, "config.eval_batch_size must be a positive int; got 0"),
    ("learning_rate", -1.0, "config.learning_rate must be a positive finite number; got -1.0"),
    ("learning_rate", float("inf"), "config.learning_rate must be a positive finite number; got inf"),
    ("learning_rate", float("nan"), "config.learning_rate must be a positive finite number; got nan"),
    ("weight_decay", float("inf"), "config.weight_decay must be a finite number >= 0; got inf"),
    ("seed", -1, r"config.seed must be an int in \[0, 2\*\*63\); got -1"),
    ("optimizer", "rmsprop", "config.optimizer must be one of"),
    ("schedule", "step", "config.schedule must be one of"),
    ("warmup_epochs", -1.0, r"config.warmup_epochs must be a finite number >= 0; got -1.0"),
    ("model.name", "vgg", r"config.model.name must be one of \('lenet', 'resnet'\)"),
    ("model.dtype", "float64", r"config.model.dtype must be None or one of"),
    ("momentum", 1.0, r"config.momentum must be a number in \[0, 1\)"),
    ("data.train_size", -1, "config.data.train_size must be an int >= 0"),
    ("compiler_options", {"xla_cpu_prefer_vector_width": 512}, "config.compiler_options must be a dict of XLA"),
  ],
)
def test_validate_config_names_the_field(field, value, message):
  config = default.get_config()
  with config.unlocked():
    parent, _, leaf = field.rpartition(".")
    (config[parent] if parent else config)[leaf] = value
  with pytest.raises(ValueError, match=message):
    lenet.validate_config(config)


def test_validate_config_reports_missing_fields():
  config = default.get_config()
  del config.model["variant"]
  with pytest.raises(ValueError, match="config.model.variant is missing"):
    lenet.validate_config(config)


def test_epoch_batches_are_seeded_shuffles():
  a = np.asarray(training.epoch_batches(0, 1, 100, 16))
  assert a.shape == (6, 16) and a.dtype == np.int32
  assert len(np.unique(a)) == 96 and a.min() >= 0 and a.max() < 100
  np.testing.assert_array_equal(a, training.epoch_batches(0, 1, 100, 16))
  assert not np.array_equal(a, training.epoch_batches(0, 2, 100, 16))
  assert not np.array_equal(a, training.epoch_batches(1, 1, 100, 16))


@pytest.mark.parametrize("schedule", ["warmup_cosine", "one_cycle"])
def test_schedules_warm_up_then_decay(schedule):
  config = default.get_config()
  config.schedule, config.num_epochs, config.warmup_epochs, config.learning_rate = schedule, 4, 1.0, 0.01
  lr = lenet.learning_rate_schedule(config, steps_per_epoch=10)
  values = np.array([float(lr(step)) for step in range(41)])
  assert values.max() == pytest.approx(0.01, rel=1e-3) and np.argmax(values) == 10
  assert values[0] < 0.005 and values[-1] < 1e-4
  assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) <= 0)


def test_evaluate_masks_the_last_partial_batch(rng):
  config = default.get_config()
  config.model.impl = "lax"  # one XLA op per conv: the eager reference below stays quick
  model = lenet.create_model(config, (28, 28, 1))
  graphdef, params = nnx.split(model, nnx.Param)
  test = training.Batch(jnp.asarray(rng.standard_normal((10, 28, 28, 1)), jnp.float32), jnp.arange(10) % 3)
  metrics = jax.jit(training.make_evaluate(graphdef, batch_size=4))(params, test)
  logits = model(test.images)
  assert int(metrics["count"]) == 10
  assert int(metrics["correct"]) == int((logits.argmax(-1) == test.labels).sum())
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, test.labels).sum()
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)


# --------------------------------------------------------------------------------------------
# end to end: the smoke config, in this process and in killed subprocesses (one test, so that
# the smoke run that the others compare with runs once, also under pytest-xdist)


def check_smoke_run(workdir: Path, history: list[dict]) -> None:
  """An uninterrupted smoke run learned and wrote its metrics, curves and checkpoints."""
  assert read_metrics(workdir) == history
  assert [r["epoch"] for r in history] == [1, 2]
  for record in history:
    assert set(record) >= {
      "epoch",
      "train_loss",
      "train_accuracy",
      "test_loss",
      "test_accuracy",
      "epoch_seconds",
      "images_per_second",
      "elapsed_seconds",
    }
  # Wall-clock since the call: compiling and both epochs of training and evaluation included.
  first, second = history
  assert first["elapsed_seconds"] > first["compile_seconds"] + first["epoch_seconds"] + first["eval_seconds"]
  assert second["elapsed_seconds"] > first["elapsed_seconds"] + second["epoch_seconds"]
  # 2 epochs on 2,048 images: far above the 10% of chance.
  assert history[-1]["test_accuracy"] > 0.8
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert (workdir / lenet.CURVES_FILE).stat().st_size > 10_000
  assert sorted(p.name for p in (workdir / lenet.CHECKPOINT_DIR).iterdir()) == ["1", "2"]


def check_restore_model(workdir: Path, history: list[dict]) -> None:
  """The restored model scores the recorded test accuracy; a rerun of a finished run adds nothing."""
  config = load_config(SMOKE)
  model = lenet.restore_model(config, workdir)
  _, test = lenet.device_data(config)
  logits = nnx.jit(lambda model, x: model(x))(model, test.images)
  assert float((logits.argmax(-1) == test.labels).mean()) == history[-1]["test_accuracy"]
  # The library's restore_model: the recorded model and normalisation, fed raw uint8 images.
  raw = training.restore_model(workdir)
  images, labels = load_mnist(split="test")
  raw_logits = raw(images[: config.data.test_size])
  assert float((raw_logits.argmax(-1) == labels[: config.data.test_size]).mean()) == history[-1]["test_accuracy"]
  # A finished run resumes to nothing: the same records, nothing appended.
  assert lenet.train_and_evaluate(config, workdir) == history
  assert read_metrics(workdir) == history


# Runs the smoke config in a subprocess that SIGKILLs itself at a chosen point of training.
KILLER = """
import os, signal, sys
from pathlib import Path
from experiments.lenet import train
from jaxconv.training import trainer

config_path, workdir, point = sys.argv[1:]
namespace = {}
exec(Path(config_path).read_text(), namespace)
kill = lambda: os.kill(os.getpid(), signal.SIGKILL)

if point == "after-checkpoint-1":  # epoch 1 is checkpointed, its metrics line not yet written
  append = trainer.append_metrics
  trainer.append_metrics = lambda path, record: kill() if record["epoch"] == 1 else append(path, record)
elif point == "mid-epoch-2":  # the third compiled call of epoch 2
  train_epoch = trainer.train_epoch

  def killing_train_epoch(train_steps, *args):
    calls = []

    def steps(*a):
      calls.append(None)
      if len(calls) == 3:
        kill()
      return train_steps(*a)

    return train_epoch(steps if args[-3].startswith("epoch 2/") else train_steps, *args)  # ..., label, key, progress

  trainer.train_epoch = killing_train_epoch
train.train_and_evaluate(namespace["get_config"](), workdir)
"""


def run_killed(workdir: Path, point: str) -> None:
  """Run the smoke config in a subprocess that kills itself at ``point``."""
  proc = subprocess.run(
    [sys.executable, "-c", KILLER, str(SMOKE), str(workdir), point], capture_output=True, text=True, cwd=ROOT
  )
  assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"


def check_resume_after_kills(workdir: Path, reference: list[dict]) -> None:
  """Killed after epoch 1's checkpoint, then mid-epoch 2, then resumed: each epoch once, same numbers."""
  run_killed(workdir, "after-checkpoint-1")
  assert (workdir / lenet.CHECKPOINT_DIR / "1").is_dir() and read_metrics(workdir) == []
  run_killed(workdir, "mid-epoch-2")
  assert [r["epoch"] for r in read_metrics(workdir)] == [1]
  assert not (workdir / lenet.CHECKPOINT_DIR / "2").exists()
  # The command line, with an override, finishes the run.
  cli = [
    sys.executable,
    "experiments/train_lenet.py",
    f"--config={SMOKE}",
    "--config.num_epochs=2",
    f"--workdir={workdir}",
  ]
  proc = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming" in proc.stderr
  records = read_metrics(workdir)
  assert [r["epoch"] for r in records] == [1, 2]
  # Same config and seed on CPU: exactly the metrics of the uninterrupted run.
  assert without_timings(records) == without_timings(reference)


@pytest.mark.slow
def test_smoke_run_restore_and_resume_after_kills(tmp_path):
  history = lenet.train_and_evaluate(load_config(SMOKE), tmp_path / "smoke")
  check_smoke_run(tmp_path / "smoke", history)
  check_restore_model(tmp_path / "smoke", history)
  check_resume_after_kills(tmp_path / "killed", history)


def test_progress_bar_draws_only_when_enabled(capsys):
  bar = lenet.Progress(8, "epoch 1/2", enabled=True)
  bar.update(4, "loss 0.5")
  bar.close()
  err = capsys.readouterr().err
  assert "epoch 1/2 |" in err and "4/8" in err and "loss 0.5" in err and err.endswith("\n")
  quiet = lenet.Progress(8, "epoch 1/2", enabled=False)
  quiet.update(4)
  quiet.close()
  assert capsys.readouterr().err == ""


def test_library_does_not_import_the_program():
  # Data -> training program -> library: nothing in the library reaches experiments/ or configs/.
  import ast

  for path in sorted((ROOT / "jaxconv").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = (
        [a.name for a in node.names]
        if isinstance(node, ast.Import)
        else [node.module or ""]
        if isinstance(node, ast.ImportFrom)
        else []
      )
      higher = [n for n in names if n.split(".")[0] in ("experiments", "configs")]
      assert not higher, f"{path} imports {higher}"
  assert not (ROOT / "jaxconv" / "train.py").exists()
  assert not any("ml_collections" in path.read_text() for path in (ROOT / "jaxconv").rglob("*.py"))


def test_warmup_as_long_as_the_run_is_clipped_with_a_warning(caplog):
  config = load_config(ROOT / "configs" / "lenet_mnist.py")
  config.num_epochs = 1  # its warmup is 2 epochs
  lenet.validate_config(config)
  with caplog.at_level("WARNING", "jaxconv"):
    lr = lenet.learning_rate_schedule(config, steps_per_epoch=10)
  assert "warming up over the first 0.5" in caplog.text
  values = np.array([float(lr(step)) for step in range(11)])
  assert np.argmax(values) == 5 and values[-1] < 0.01 * values.max()


def _ynnpack_fusions(options: dict | None) -> dict[str, int]:
  """How many ops of each kind XLA hands to YNNPACK in LeNet's compiled training step, with ``options``."""
  mesh = parallel.make_mesh(1)
  train = training.place_train(np.zeros((128, 28, 28, 1), np.float32), np.zeros(128, np.int32), mesh)
  tx = optax.adam(1e-3)
  graphdef, state = training.create_state(LeNet(rngs=nnx.Rngs(0)), tx)
  steps, _ = training.compile_steps(graphdef, tx, state, train, None, 128, 128, mesh, compiler_options=options)
  kinds: Counter = Counter()
  for line in steps.as_text().splitlines():
    match = re.match(r'\s*(?:ROOT )?%ynn_fusion[\w.]* = .*?op_name="([^"]*)"', line)
    if match:
      kinds[match.group(1).rsplit("/", 1)[-1]] += 1
  return dict(kinds)


def test_the_programs_compiler_options_take_only_the_dots_from_ynnpack():
  defaults, ours = _ynnpack_fusions(None), _ynnpack_fusions(compiler_options(default.get_config()))
  if not defaults:
    pytest.skip("this jaxlib hands none of LeNet's ops to YNNPACK")
  # The dense layers' dots move to XLA's own code; the reductions (bias gradients here, BatchNorm's
  # statistics in a ResNet) stay with YNNPACK.
  assert defaults.get("dot_general", 0) > 0 and "dot_general" not in ours
  assert ours == {k: v for k, v in defaults.items() if k != "dot_general"} and ours.get("reduce_sum", 0) > 0
