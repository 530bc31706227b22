"""Train LeNet-5 on MNIST from a config: data on the mesh, compiled epochs, checkpoints, metrics, curves.

The run owns its work directory (``jaxconv.training.WorkdirLock``) and is the record of what was
done: each finished epoch is a checkpoint (arrays with their SHA-256, the config, the metrics so
far), and ``metrics.jsonl`` is rewritten from the newest intact one on start, so a run killed at
any point resumes where its last checkpoint left it, with the same numbers. A resume with other
model, optimiser or data fields is refused (``config.RESUME_SAFE`` lists what may change); a
diverging run stops at the epoch whose training loss is NaN or infinite, before saving it.
"""

from __future__ import annotations

import errno
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from experiments.lenet.config import RESUME_SAFE, config_record, validate_config
from experiments.lenet.data import NUM_CLASSES, device_data
from experiments.lenet.recipe import create_model, create_optimizer, learning_rate_schedule
from experiments.lenet.report import (
  CURVES_FILE,
  METRICS_FILE,
  Progress,
  append_metrics,
  metrics_current,
  plot_curves,
  strict_record,
  write_metrics,
)
from jaxconv import parallel
from jaxconv.training import (
  Batch,
  Checkpoints,
  ConfigMismatchError,
  TrainState,
  WorkdirLock,
  abstract,
  augment,
  check_finite_loss,
  compile_steps,
  config_differences,
  create_state,
  epoch_batches,
  epoch_key,
  mean_loss,
  run_epoch,
  steps_per_epoch,
  summarize,
)

__all__ = ["CHECKPOINT_DIR", "restore_model", "train_and_evaluate", "train_epoch"]

CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2

log = logging.getLogger("jaxconv.lenet")


def _check_resume(config: ml_collections.ConfigDict, directory: Path, input_shape: tuple[int, ...] | None = None):
  """``check(meta)`` for ``Checkpoints.restore``: refuses a checkpoint whose config differs outside ``RESUME_SAFE``.

  With ``input_shape``, the images' ``(H, W, C)`` must also be the checkpoint's (the same config
  may read other files).
  """
  current = config_record(config)

  def check(meta: dict[str, Any]) -> None:
    differences = config_differences(meta.get("config", {}), current, RESUME_SAFE)
    if input_shape is not None and tuple(meta.get("input_shape", ())) != input_shape:
      differences.append(f"image size (H, W, C): {tuple(meta.get('input_shape', ()))} -> {input_shape}")
    if differences:
      raise ConfigMismatchError(
        f"the checkpoints under {directory} were written with another config; resuming would change "
        f"{', '.join(differences)} (checkpoint -> now). Use another workdir, or the checkpoint's values"
      )

  return check


def train_epoch(
  train_steps, state: TrainState, data: Batch, idx: jax.Array, steps_per_call: int, label: str, key: jax.Array
):
  """One epoch of ``jaxconv.training.run_epoch`` with a progress bar labelled ``label``."""
  bar = Progress(idx.shape[0], label)
  progress = (lambda done, metrics: bar.update(done, f"loss {mean_loss(metrics):.4f}")) if bar.enabled else None
  state, metrics = run_epoch(train_steps, state, data, idx, steps_per_call, progress, key)
  bar.close()
  return state, metrics


def _disk_full(raised: BaseException) -> bool:
  """Whether ``raised`` or one of its causes is ENOSPC (orbax and tensorstore wrap it, or only keep its text)."""
  error: BaseException | None = raised
  while error is not None:
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _writing(what: str, workdir: Path, epoch: int, call, *args):
  """``call(*args)``; a full disk becomes one ``OSError(ENOSPC)`` saying what was lost and how to go on."""
  try:
    return call(*args)
  except Exception as e:
    if not _disk_full(e):
      raise
    raise OSError(
      errno.ENOSPC,
      f"no space left on device writing {what} of epoch {epoch} under {workdir}; "
      f"free some space and rerun the same command: it resumes after the last saved epoch",
    ) from None


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | Path, *, start_time: float | None = None
) -> list[dict]:
  """Train ``config``'s LeNet, resuming from ``workdir``'s checkpoints; returns the metrics of every epoch.

  Data parallel over ``config.mesh.data`` devices (of every process when ``config.distributed``
  is enabled); only process 0 writes metrics, plots and logs, and holds the workdir's lock.
  ``start_time`` (``time.perf_counter()``, default: now) is what each record's ``elapsed_seconds``
  counts from: the command line passes the moment it started.
  """
  start_time = time.perf_counter() if start_time is None else start_time
  validate_config(config)
  parallel.initialize_distributed(config)
  mesh = parallel.make_mesh(config.mesh.data)
  parallel.check_divisible(config.batch_size, "batch_size", mesh)
  parallel.check_divisible(config.eval_batch_size, "eval_batch_size", mesh)
  main = parallel.is_main_process()
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with WorkdirLock(workdir) if main else nullcontext() as lock:
    read_only = bool(lock and lock.read_only)
    return _run(config, workdir, mesh, main, read_only, start_time)


def _run(
  config: ml_collections.ConfigDict, workdir: Path, mesh, main: bool, read_only: bool, start_time: float
) -> list[dict]:
  """The body of ``train_and_evaluate`` once the workdir is held."""
  train_data, test_data = device_data(config, mesh)
  num_train = train_data.labels.shape[0]
  steps = steps_per_epoch(num_train, config.batch_size, parallel.num_shards(mesh))
  input_shape = tuple(train_data.images.shape[1:])
  tx = create_optimizer(config, steps)
  graphdef, state = create_state(create_model(config, input_shape, NUM_CLASSES), tx)
  state = parallel.replicate(state, mesh)
  schedule = learning_rate_schedule(config, steps)
  directory = workdir / CHECKPOINT_DIR

  with Checkpoints(directory, KEEP_CHECKPOINTS, create=not read_only) as checkpoints:
    targets = {"params": abstract(state.params), "opt_state": abstract(state.opt_state)}
    restored = checkpoints.restore(
      targets, _check_resume(config, directory, input_shape), set_aside=main and not read_only
    )
    done, history = 0, []
    if restored is not None:
      done, items, meta = restored
      state, history = TrainState(items["params"], items["opt_state"]), meta["history"]
    # The checkpoint is the record of finished epochs: a line appended after it, or one missing
    # because a run was killed between saving and appending, is rewritten from it.
    if main and not read_only:
      write_metrics(workdir / METRICS_FILE, history)
    elif main and not metrics_current(workdir / METRICS_FILE, history):
      log.warning(
        "%s is read-only: its %s does not match the checkpoint's %d epochs and stays so",
        workdir,
        METRICS_FILE,
        len(history),
      )
    if done and main:
      log.info("resuming from %s after epoch %d", workdir, done)
    if done < config.num_epochs:
      if read_only:
        raise OSError(errno.EROFS, f"{workdir} is read-only: cannot train epochs {done + 1}..{config.num_epochs} there")
      start = time.perf_counter()
      train_steps, evaluate = compile_steps(
        graphdef, tx, state, train_data, test_data, config.batch_size, config.eval_batch_size, mesh,
        augmentation=augment.from_config(config.augment), label_smoothing=float(config.label_smoothing),
      )  # fmt: skip
      compile_seconds = time.perf_counter() - start
    for epoch in range(done + 1, config.num_epochs + 1):
      t0 = time.perf_counter()
      idx = epoch_batches(config.seed, epoch, num_train, config.batch_size, mesh)
      label, key = f"epoch {epoch}/{config.num_epochs}", epoch_key(config.seed, epoch)
      state, train_metrics = train_epoch(train_steps, state, train_data, idx, config.steps_per_call, label, key)
      check_finite_loss(train_metrics, epoch)  # before anything of the epoch is saved
      t1 = time.perf_counter()
      test_metrics = jax.device_get(evaluate(state.params, test_data))
      record = strict_record({
          "epoch": epoch,
          **summarize(train_metrics, "train"),
          **summarize(test_metrics, "test"),
          "epoch_seconds": t1 - t0,
          "images_per_second": steps * config.batch_size / (t1 - t0),
          "eval_seconds": time.perf_counter() - t1,
          "compile_seconds": compile_seconds,
          "elapsed_seconds": time.perf_counter() - start_time,
          "learning_rate": float(schedule(epoch * steps)),
      })  # fmt: skip
      history.append(record)
      meta = {"input_shape": input_shape, "history": history, "config": config_record(config)}
      _writing("the checkpoint", workdir, epoch, checkpoints.save, epoch, state._asdict(), meta)  # orbax: every process
      if not main:  # the metrics line and the log: process 0 only
        continue
      _writing(METRICS_FILE, workdir, epoch, append_metrics, workdir / METRICS_FILE, record)
      log.info(
          "epoch %d: train loss %.4f acc %.4f, test loss %.4f acc %.4f, %.2fs (%.0f images/s)",
          epoch, record["train_loss"], record["train_accuracy"], record["test_loss"], record["test_accuracy"],
          record["epoch_seconds"], record["images_per_second"],
      )  # fmt: skip
  curves = workdir / CURVES_FILE
  if history and main and not read_only and (done < config.num_epochs or not curves.is_file()):
    _writing(CURVES_FILE, workdir, len(history), plot_curves, history, curves)
  return history


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path) -> nnx.Module:
  """The LeNet of ``config`` with the parameters of ``workdir``'s newest intact checkpoint (nothing is moved)."""
  validate_config(config)
  directory = Path(workdir) / CHECKPOINT_DIR
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint under {directory}")
  graphdefs = []

  def targets(meta: dict[str, Any]) -> dict[str, Any]:
    model = nnx.eval_shape(lambda: create_model(config, tuple(meta["input_shape"]), NUM_CLASSES))
    graphdef, params = nnx.split(model, nnx.Param)
    graphdefs.append(graphdef)
    # On this process's first device, whichever devices saved it.
    return {"params": abstract(params, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))}

  with Checkpoints(directory, KEEP_CHECKPOINTS, create=False) as checkpoints:
    restored = checkpoints.restore(targets, _check_resume(config, directory), set_aside=False)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint under {directory}")
  return nnx.merge(graphdefs[-1], restored[1]["params"])
