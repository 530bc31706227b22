"""Training runs under faults: diverging loss, bad labels and shapes, damaged checkpoints, another
config, a held workdir, a read-only or full disk, bad config values (issue 12, "Training runs").

Command-line cases run ``experiments/train_lenet.py`` in subprocesses on tiny data (refusals come
before anything is compiled); the others call the library or the program in this process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import lenet
from experiments.lenet import data as program_data
from experiments.lenet import report
from jaxconv import training

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.py"
TINY = ["--config.data.train_size=256", "--config.data.test_size=64", "--config.steps_per_call=2"]
TIMINGS = ("epoch_seconds", "images_per_second", "eval_seconds", "compile_seconds", "elapsed_seconds")


def load_config(path: Path = SMOKE, **fields):
  """``get_config()`` of a config file, with top-level or dotted ``fields`` (``data__train_size=...``) set."""
  namespace: dict = {}
  exec(compile(path.read_text(), str(path), "exec"), namespace)
  config = namespace["get_config"]()
  for name, value in fields.items():
    *parents, leaf = name.split("__")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def tiny_config(**fields):
  """The smoke config on 256 training and 64 test images."""
  return load_config(**{"data__train_size": 256, "data__test_size": 64, "steps_per_call": 2, **fields})


def cli(workdir: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
  """``train_lenet.py`` with the tiny smoke config and ``overrides``."""
  cmd = [sys.executable, "experiments/train_lenet.py", f"--config={SMOKE}", *TINY, *overrides, f"--workdir={workdir}"]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
  """The one-line error of a refused run (exit 1, no traceback)."""
  assert proc.returncode == 1, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("train_lenet.py: error: "), proc.stderr[-3000:]
  return last


def strict_json_lines(path: Path) -> list[dict]:
  """The records of a JSON-lines file, parsed strictly (``NaN``/``Infinity`` tokens fail)."""

  def refuse(token: str):
    raise AssertionError(f"non-standard JSON token {token} in {path}")

  return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def without_timings(records: list[dict]) -> list[dict]:
  """``records`` without their wall-clock fields."""
  return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def all_files(directory: Path) -> list[str]:
  """Every file under ``directory``, relative."""
  return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# bad values and data, refused before training


@pytest.mark.parametrize(
  "override, field",
  [
    ("--config.seed=-1", "config.seed"),
    pytest.param("--config.learning_rate=inf", "config.learning_rate", marks=pytest.mark.slow),  # 3 s each
  ],
)
def test_cli_refuses_bad_config_values(tmp_path, override, field):
  line = error_line(cli(tmp_path / "run", override))
  assert f"{field} must be" in line


def write_mnist(directory: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
  """The four (uncompressed) MNIST IDX files of these splits."""

  def idx(array: np.ndarray, code: int) -> bytes:
    return (
      bytes([0, 0, code, array.ndim])
      + struct.pack(f">{array.ndim}I", *array.shape)
      + array.astype(array.dtype.newbyteorder(">")).tobytes()
    )

  directory.mkdir()
  for (images, labels), (image_file, label_file) in zip(
    (train, test),
    (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
  ):
    (directory / image_file).write_bytes(idx(images.astype(np.uint8), 0x08))
    (directory / label_file).write_bytes(idx(labels.astype(np.uint8), 0x08))
  return directory


def split(
  rng: np.random.Generator, n: int, size: int = 28, bad: dict[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """``n`` random images ``(n, size, size)`` and labels in [0, 10), with ``bad`` {row: label} put in."""
  labels = rng.integers(0, 10, n)
  for row, label in (bad or {}).items():
    labels[row] = label
  return rng.integers(0, 256, (n, size, size)), labels


@pytest.mark.parametrize(
  "case, message",
  [
    # 3 s each: one in the fast set
    pytest.param(
      "train_labels", r"3 of the 128 train labels are outside [0, 10) (values 10, 12)", marks=pytest.mark.slow
    ),
    pytest.param("test_minus_one", r"2 of the 64 test labels are outside [0, 10) (values 255)", marks=pytest.mark.slow),
    ("sizes", r"the train and test images differ in size: train (28, 28, 1), test (32, 32, 1)"),
  ],
)
def test_cli_refuses_bad_data_before_training(tmp_path, rng, case, message):
  train = split(rng, 128, bad={0: 10, 5: 12, 7: 10} if case == "train_labels" else None)
  # IDX labels are unsigned bytes: a -1 written by a careless converter reads back as 255.
  test = split(
    rng, 64, size=32 if case == "sizes" else 28, bad={1: -1 % 256, 2: -1 % 256} if case == "test_minus_one" else None
  )
  data_dir = write_mnist(tmp_path / "mnist", train, test)
  proc = cli(
    tmp_path / "run", f"--config.data.dir={data_dir}", "--config.data.train_size=0", "--config.data.test_size=0"
  )
  assert message in error_line(proc)
  assert "compile" not in proc.stderr and not (tmp_path / "run" / lenet.CHECKPOINT_DIR).exists()


def test_labels_are_checked_with_the_split_named():
  training.check_labels(np.arange(10), 10, "train")
  with pytest.raises(ValueError, match=r"1 of the 3 test labels are outside \[0, 10\) \(values -1\)"):
    training.check_labels(np.array([0, -1, 9]), 10, "test")


# --------------------------------------------------------------------------------------------
# a diverging run


@pytest.mark.slow
def test_cli_stops_a_diverging_run_naming_the_epoch(tmp_path):
  proc = cli(tmp_path / "run", "--config.learning_rate=1e6", "--config.schedule=constant", "--config.warmup_epochs=0")
  line = error_line(proc)
  assert "training loss is nan in epoch 1" in line and "learning rate too high" in line
  assert strict_json_lines(tmp_path / "run" / lenet.METRICS_FILE) == []
  assert not any((tmp_path / "run" / lenet.CHECKPOINT_DIR).iterdir())  # the diverged epoch is not saved


def test_metrics_file_is_strict_json(tmp_path):
  path = tmp_path / lenet.METRICS_FILE
  report.write_metrics(
    path, [{"epoch": 1, "train_loss": float("nan"), "test_loss": float("inf"), "test_accuracy": 0.5}]
  )
  report.append_metrics(path, {"epoch": 2, "train_loss": -float("inf"), "test_loss": 1.0, "test_accuracy": 0.5})
  assert strict_json_lines(path) == [
    {"epoch": 1, "train_loss": None, "test_loss": None, "test_accuracy": 0.5},
    {"epoch": 2, "train_loss": None, "test_loss": 1.0, "test_accuracy": 0.5},
  ]


def test_non_finite_loss_names_the_epoch():
  training.check_finite_loss({"loss": np.float32(3.0), "count": np.int32(2)}, 4)
  with pytest.raises(training.NonFiniteLossError, match="training loss is inf in epoch 4"):
    training.check_finite_loss({"loss": np.float32(np.inf), "count": np.int32(2)}, 4)


# --------------------------------------------------------------------------------------------
# checkpoints: integrity, damage, another config


def small_state(seed: int) -> dict:
  """Items of a checkpoint: random ``params`` (large enough for a data file of its own) and ``opt_state``."""
  rng = np.random.default_rng(seed)
  return {
    "params": {"w": jnp.asarray(rng.standard_normal((64, 64)), jnp.float32), "b": jnp.zeros(64)},
    "opt_state": {"count": jnp.asarray(seed)},
  }


def largest_file(directory: Path) -> Path:
  """The largest file under ``directory``."""
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_bytes(step: Path) -> None:
  """64 flipped bytes in the middle of the largest params data file."""
  path = largest_file(step / "params")
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
  path.write_bytes(bytes(data))


def truncate(step: Path) -> None:
  """The largest params data file cut to half."""
  path = largest_file(step / "params")
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def bad_meta(step: Path) -> None:
  """The JSON metadata item made invalid JSON."""
  (step / "meta" / "metadata").write_text('{"history": [')


def no_manifest(step: Path) -> None:
  """The params item's OCDBT manifest removed."""
  (step / "params" / "manifest.ocdbt").unlink()


DAMAGE = {
  "flipped_bytes": flip_bytes,
  "truncated_file": truncate,
  "bad_meta_json": bad_meta,
  "missing_manifest": no_manifest,
}


def saved(directory: Path, steps: int = 2) -> list[dict]:
  """``steps`` checkpoints of ``small_state(step)`` under ``directory``; their items."""
  items = [small_state(step) for step in range(1, steps + 1)]
  with training.Checkpoints(directory) as checkpoints:
    for step, state in enumerate(items, 1):
      checkpoints.save(step, state, {"step": step})
  return items


def restore(directory: Path, **kwargs):
  """``Checkpoints.restore`` of ``small_state``'s items."""
  targets = {name: training.abstract(tree) for name, tree in small_state(0).items()}
  with training.Checkpoints(directory) as checkpoints:
    return checkpoints.restore(targets, **kwargs)


def assert_same_items(got: dict, want: dict) -> None:
  """Equal pytrees of arrays."""
  for name in want:
    for a, b in zip(jax_leaves(got[name]), jax_leaves(want[name]), strict=True):
      np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
  """The leaves of ``tree``, in tree order."""
  import jax

  return jax.tree.leaves(tree)


@pytest.mark.parametrize("damage", [*DAMAGE, "empty_step_dir"])
@pytest.mark.filterwarnings(
  "ignore::pytest.PytestUnraisableExceptionWarning"
)  # orbax's read coroutines of a truncated file
def test_damaged_latest_checkpoint_is_set_aside(tmp_path, caplog, damage):
  directory = tmp_path / "checkpoints"
  items = saved(directory)
  if damage == "empty_step_dir":
    (directory / "3").mkdir()
    latest = 3
  else:
    DAMAGE[damage](directory / "2")
    latest = 2
  before = all_files(directory)
  with caplog.at_level(logging.WARNING, "jaxconv"):
    step, restored, meta = restore(directory)
  assert step == latest - 1 and meta["step"] == latest - 1
  assert_same_items(restored, items[latest - 2])
  assert f"checkpoint step {latest} is damaged" in caplog.text and "moved to" in caplog.text
  # Set aside, nothing deleted: every file is still there, the damaged step beside the others.
  aside = tmp_path / "checkpoints.damaged"
  assert sorted(p.name for p in aside.iterdir()) == [str(latest)]
  moved = [f"{latest}/{name}" for name in all_files(aside / str(latest))]
  assert sorted(all_files(directory) + moved) == before


def test_checksum_catches_a_changed_value(tmp_path):
  # A value changed in place, the files still well-formed: only the digest can tell.
  directory = tmp_path / "checkpoints"
  saved(directory, steps=1)
  with training.Checkpoints(directory) as checkpoints:
    meta = checkpoints.read_meta(1)
  state = small_state(1)
  assert meta["sha256"]["params"] == training.tree_digest(state["params"])
  state["params"]["b"] = state["params"]["b"].at[3].set(1e-30)
  assert training.tree_digest(state["params"]) != meta["sha256"]["params"]


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
  directory = tmp_path / "checkpoints"
  saved(directory)
  flip_bytes(directory / "1")
  bad_meta(directory / "2")
  with pytest.raises(
    training.NoIntactCheckpointError,
    match=(
      r"no intact checkpoint under .*checkpoint step 2 is damaged: unreadable metadata"
      r".*checkpoint step 1 is damaged"
    ),
  ):
    restore(directory)
  assert sorted(p.name for p in (tmp_path / "checkpoints.damaged").iterdir()) == ["1", "2"]


def test_config_differences_name_fields_and_values():
  saved_config = {
    "model": {"variant": "modern", "impl": None},
    "num_epochs": 2,
    "optimizer": "adamw",
    "mesh": {"data": 4},
  }
  current = {
    "model": {"variant": "classic", "impl": "lax"},
    "num_epochs": 5,
    "optimizer": "adamw",
    "mesh": {"data": 1},
    "new": 1,
  }
  assert training.config_differences(saved_config, current, lenet.RESUME_SAFE) == [
    "model.variant: 'modern' -> 'classic'",
    "new: '<absent>' -> 1",
  ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[dict]]:
  """A finished 2-epoch tiny run (checkpoints 1 and 2) and its history; tests copy it before changing it."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  return workdir, lenet.train_and_evaluate(tiny_config(), workdir)


def copy_run(trained: tuple[Path, list[dict]], tmp_path: Path) -> Path:
  """A copy of the trained run's workdir."""
  return Path(shutil.copytree(trained[0], tmp_path / "run"))


def test_resume_with_another_config_is_refused_naming_the_fields(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  before = all_files(workdir)
  bad = tiny_config(optimizer="sgd", model__variant="classic", data__train_size=128)
  with pytest.raises(training.ConfigMismatchError) as refused:
    lenet.train_and_evaluate(bad, workdir)
  message = str(refused.value)
  for difference in (
    "model.variant: 'modern' -> 'classic'",
    "optimizer: 'adamw' -> 'sgd'",
    "data.train_size: 256 -> 128",
  ):
    assert difference in message
  assert "num_epochs" not in message and all_files(workdir) == before  # refused, nothing set aside
  # Safe fields may change: a finished run with other steps_per_call, eval_batch_size, kernel.
  safe = tiny_config(steps_per_call=3, eval_batch_size=32)
  safe.model.impl = "lax"
  assert lenet.train_and_evaluate(safe, workdir) == trained[1]


def test_resume_with_other_image_sizes_is_refused(trained, tmp_path, monkeypatch):
  # The same config reading other files (here: the images padded to 32x32): refused, not "damaged".
  workdir = copy_run(trained, tmp_path)
  load_split = program_data.load_split

  def padded(config, split):
    images, labels = load_split(config, split)
    return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))), labels

  monkeypatch.setattr(program_data, "load_split", padded)
  with pytest.raises(training.ConfigMismatchError, match=r"image size \(H, W, C\): \(28, 28, 1\) -> \(32, 32, 1\)"):
    lenet.train_and_evaluate(tiny_config(), workdir)
  assert not (workdir / f"{lenet.CHECKPOINT_DIR}.damaged").exists()


def test_damaged_latest_checkpoint_resumes_from_the_intact_one(trained, tmp_path, caplog):
  workdir = copy_run(trained, tmp_path)
  flip_bytes(workdir / lenet.CHECKPOINT_DIR / "2")
  with caplog.at_level(logging.WARNING, "jaxconv"):
    history = lenet.train_and_evaluate(tiny_config(), workdir)
  assert "checkpoint step 2 is damaged" in caplog.text
  assert (workdir / f"{lenet.CHECKPOINT_DIR}.damaged" / "2" / "params").is_dir()
  # Epoch 2 trained again from epoch 1's checkpoint: the numbers of the undamaged run.
  assert without_timings(history) == without_timings(trained[1])
  assert without_timings(strict_json_lines(workdir / lenet.METRICS_FILE)) == without_timings(trained[1])


# --------------------------------------------------------------------------------------------
# the workdir: held by another run, read-only, full


HOLDER = """
import sys, time
from jaxconv.training import WorkdirLock
with WorkdirLock(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def test_a_held_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(
      training.WorkdirLockedError, match=rf"in use by another run \(pid {holder.pid} on {socket.gethostname()} since"
    ):
      training.WorkdirLock(workdir).acquire()
  finally:
    os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the kernel drops the flock, the record stays
    holder.wait()
  assert json.loads((workdir / training.lock.LOCK_FILE).read_text())["pid"] == holder.pid
  with caplog.at_level(logging.WARNING, "jaxconv"), training.WorkdirLock(workdir):
    assert json.loads((workdir / training.lock.LOCK_FILE).read_text())["pid"] == os.getpid()
  assert f"taking over the stale lock of pid {holder.pid}" in caplog.text
  assert (workdir / training.lock.LOCK_FILE).read_text() == ""  # released


@pytest.mark.slow  # a live run in a subprocess (7 s); the lock's refusal is tested in-process in the fast set
def test_cli_refuses_a_workdir_held_by_a_live_run(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with training.WorkdirLock(workdir):
    line = error_line(cli(workdir))
  assert f"is in use by another run (pid {os.getpid()} on {socket.gethostname()}" in line


def read_only_mount(path: Path) -> None:
  """Make ``path`` read-only for this process: a read-only bind mount as root, file modes otherwise."""
  if os.geteuid() != 0:
    for p in [path, *path.rglob("*")]:
      p.chmod(p.stat().st_mode & ~0o222)
    return
  for cmd in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]):
    if subprocess.run(cmd, capture_output=True).returncode:
      pytest.skip(f"cannot make a read-only mount here ({' '.join(cmd)} failed)")


def test_finished_run_on_a_read_only_workdir_has_nothing_to_do(trained, tmp_path):
  workdir = copy_run(trained, tmp_path)
  before = {name: (workdir / name).stat().st_mtime_ns for name in all_files(workdir)}
  read_only_mount(workdir)
  try:
    assert lenet.train_and_evaluate(tiny_config(), workdir) == trained[1]
    assert {name: (workdir / name).stat().st_mtime_ns for name in all_files(workdir)} == before
    with pytest.raises(OSError, match="is read-only: cannot train epochs 3..3"):
      lenet.train_and_evaluate(tiny_config(num_epochs=3), workdir)
  finally:
    if os.geteuid() == 0:
      subprocess.run(["umount", str(workdir)], check=True)


@pytest.fixture
def tiny_disk(tmp_path) -> Path:
  """A 200 KiB tmpfs (root only): too small for the first checkpoint."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if (
    os.geteuid() != 0
    or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True).returncode
  ):
    pytest.skip("mounting a tmpfs needs root")
  yield disk
  subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_cli_reports_a_full_disk_in_one_line(tiny_disk):
  proc = cli(tiny_disk / "run", "--config.num_epochs=1")
  line = error_line(proc)
  assert "no space left on device writing the checkpoint of epoch 1" in line and "rerun" in line
  assert proc.stderr.count("No space left on device") <= 1, proc.stderr[-3000:]
