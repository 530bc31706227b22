"""The command lines experiments/train_lenet.py and experiments/train.py: every refusal is one line on stderr,
exit status 1, no traceback, and no work directory left behind; --verbose shows the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.py"
PROGRAMS = ("train_lenet.py", "train.py")

# Runs a program with tensorflow_datasets made unimportable, as on a machine without it.
WITHOUT_TFDS = """
import runpy, sys
sys.modules["tensorflow_datasets"] = None
script, *sys.argv[1:] = sys.argv[1:]
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
"""


def run(program: str, *args: str, env: dict | None = None, without_tfds: bool = False) -> subprocess.CompletedProcess:
  """``experiments/<program> args`` from the repository root."""
  script = f"experiments/{program}"
  cmd = [sys.executable, "-c", WITHOUT_TFDS, script] if without_tfds else [sys.executable, script]
  return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def refusal(proc: subprocess.CompletedProcess, program: str) -> str:
  """The one stderr line of a refused run (exit 1, nothing else on stderr, no traceback)."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert lines[0].startswith(f"{program}: error: "), lines[0]
  return lines[0]


CASES = {
  "unknown_field": (
    ["--config.num_epoch=1"],
    "unknown config field --config.num_epoch (did you mean --config.num_epochs?)",
  ),
  "missing_config": (["--config=configs/nonexistent.py"], "config file configs/nonexistent.py does not exist"),
  "bad_value": (["--config.seed=-1"], "config.seed must be an int in [0, 2**63); got -1"),
  "unparsable_value": (["--config.num_epochs=abc"], "--config.num_epochs=abc"),
  "missing_data_dir": (["--config.data.dir=/nonexistent/mnist"], "config.data.dir must be a directory"),
  "empty_data_dir": (["--config.data.dir={empty}"], "does not hold the MNIST IDX files of the train split"),
  "tfds_unprepared": (
    ["--config.data.source=tfds", "--config.data.dir={empty}"],
    "no prepared tfds dataset 'mnist' (train split)",
  ),
  "model_name": (["--config.model.name=vgg"], "config.model.name must be one of ('lenet', 'resnet')"),
}


# Both programs are one main (experiments.lenet.cli) under two names, and one wrapper makes every
# refusal one line: the fast set runs a value and a data case on the README's train_lenet.py and a
# config case on train.py, the slow set the rest (2-3 s each).
FAST_REFUSALS = {
  "train_lenet.py": {"bad_value", "tfds_unprepared"},
  "train.py": {"model_name"},
}
REFUSAL_GRID = [
  pytest.param(program, case, marks=[] if case in FAST_REFUSALS[program] else [pytest.mark.slow])
  for program in PROGRAMS
  for case in sorted(CASES)
]


@pytest.mark.parametrize(("program", "case"), REFUSAL_GRID)
def test_refusals_are_one_line_and_leave_no_workdir(tmp_path, program, case):
  empty = tmp_path / "empty"
  empty.mkdir()
  overrides, message = CASES[case]
  workdir = tmp_path / "run"
  args = [f"--config={SMOKE}", *(o.format(empty=empty) for o in overrides), f"--workdir={workdir}"]
  line = refusal(run(program, *args), program)
  assert message in line
  assert not workdir.exists()


def test_unprepared_tfds_says_how_to_prepare_it(tmp_path):
  line = refusal(
    run("train.py", f"--config={SMOKE}", "--config.data.source=tfds", f"--config.data.dir={tmp_path}",
        f"--workdir={tmp_path / 'run'}"),
    "train.py",
  )  # fmt: skip
  assert "tfds.data_source('mnist')" in line and "tfds build mnist" in line and "TFDS_DATA_DIR" in line


def test_tfds_not_installed_is_one_line(tmp_path):
  proc = run(
    "train_lenet.py", f"--config={SMOKE}", "--config.data.source=tfds", f"--workdir={tmp_path / 'run'}",
    without_tfds=True,
  )  # fmt: skip
  assert "needs tensorflow-datasets: pip install 'jaxconv[tfds]'" in refusal(proc, "train_lenet.py")
  assert not (tmp_path / "run").exists()


def test_missing_workdir_flag_is_one_line():
  assert "--workdir" in refusal(run("train.py", f"--config={SMOKE}"), "train.py")


@pytest.mark.parametrize("how", ["flag", pytest.param("env", marks=pytest.mark.slow)])  # 3 s each
def test_verbose_shows_the_traceback(tmp_path, how):
  import os

  args = [f"--config={SMOKE}", "--config.seed=-1", f"--workdir={tmp_path / 'run'}"]
  env = {**os.environ, "JAXCONV_VERBOSE": "1"} if how == "env" else None
  proc = run("train.py", *args, *(["--verbose"] if how == "flag" else []), env=env)
  assert proc.returncode != 0 and "Traceback" in proc.stderr
  assert "config.seed must be an int in [0, 2**63); got -1" in proc.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py"))
def test_every_shipped_config_takes_one_epoch(name):
  import runpy

  import numpy as np

  from experiments import lenet

  config = runpy.run_path(str(ROOT / "configs" / name))["get_config"]()
  config.num_epochs = 1
  lenet.validate_config(config)
  lr = lenet.learning_rate_schedule(config, steps_per_epoch=20)
  values = np.array([float(lr(step)) for step in range(21)])
  assert np.isfinite(values).all() and values.max() > 0
  if config.schedule != "constant":  # it warms up, then decays within the one epoch
    assert 0 < np.argmax(values) < 20 and values[-1] < 0.5 * values.max()


@pytest.mark.slow
def test_train_py_trains_a_resnet_and_restore_model_takes_raw_images(tmp_path):
  import json

  from jaxconv import training
  from jaxconv.data import load_mnist

  workdir = tmp_path / "run"
  args = [
    "--config=configs/resnet_mnist.py", "--config.num_epochs=1", "--config.data.train_size=256",
    "--config.data.test_size=64", "--config.eval_batch_size=64", "--config.steps_per_call=4", f"--workdir={workdir}",
  ]  # fmt: skip
  proc = run("train.py", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (record,) = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  model = training.restore_model(workdir)
  images, labels = load_mnist(split="test")
  accuracy = float((model(images[:64]).argmax(-1) == labels[:64]).mean())
  assert accuracy == record["test_accuracy"]
