"""Train the configured model (LeNet-5 or a ResNet) on MNIST-like data: the program around ``jaxconv.training``.

The loop is the library's (``jaxconv.training.trainer.run``, what ``fit`` runs): the work
directory's lock, verified checkpoints, ``metrics.jsonl`` rewritten from the newest intact
checkpoint on start, the NaN stop naming the epoch. The program adds what a config describes: the
data (loaded, checked and normalised), the model and optimiser, the mesh (and ``jax.distributed``),
the config recorded in each checkpoint (a resume with other model, optimiser or data fields is
refused; ``config.RESUME_SAFE`` lists what may change), the progress bar, the learning rate per
epoch, and ``curves.png``. Each checkpoint also records the model and the normalisation, so that
``jaxconv.training.restore_model(workdir)`` rebuilds a model that takes raw images.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from experiments.lenet.config import RESUME_SAFE, augment_config, compiler_options, config_record, validate_config
from experiments.lenet.data import NUM_CLASSES, load_data
from experiments.lenet.recipe import create_optimizer, learning_rate_schedule, model_spec
from experiments.lenet.report import CURVES_FILE, METRICS_FILE, Progress, plot_curves
from jaxconv import parallel
from jaxconv.training import inference, trainer
from jaxconv.training.inference import build_model
from jaxconv.training.loop import steps_per_epoch
from jaxconv.training.trainer import CHECKPOINT_DIR

__all__ = ["CHECKPOINT_DIR", "initialize_distributed", "make_mesh", "restore_model", "train_and_evaluate"]

log = logging.getLogger("jaxconv.program")


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Start ``jax.distributed`` from ``config.distributed`` if enabled; call it before any JAX computation."""
  settings = config.distributed
  if settings.enabled:
    parallel.initialize_distributed(settings.coordinator_address, settings.num_processes, settings.process_id)


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """The data-parallel mesh of ``config.mesh.data`` devices; errors name the config fields."""
  try:
    mesh = parallel.make_mesh(config.mesh.data)
  except ValueError as e:
    raise ValueError(str(e).replace("num_devices", "config.mesh.data")) from None
  devices = parallel.num_shards(mesh)
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % devices:
      raise ValueError(
        f"config.{name}={config[name]} must be a multiple of the {devices} devices of the mesh "
        f"(set config.{name} or config.mesh.data)"
      )
  return mesh


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | Path, *, start_time: float | None = None
) -> list[dict]:
  """Train ``config``'s model, resuming from ``workdir``'s checkpoints; returns the metrics of every epoch.

  Data parallel over ``config.mesh.data`` devices (of every process when ``config.distributed``
  is enabled); only process 0 writes metrics, plots and logs, and holds the workdir's lock.
  ``start_time`` (``time.perf_counter()``, default: now) is what each record's ``elapsed_seconds``
  counts from: the command line passes the moment it started. Everything that can be refused (the
  config, the data, the mesh) is refused before the workdir is created.
  """
  start_time = time.perf_counter() if start_time is None else start_time
  validate_config(config)
  initialize_distributed(config)
  mesh = make_mesh(config)
  train, test, normalization = load_data(config)
  shards = parallel.num_shards(mesh)
  steps = steps_per_epoch(len(train[1]) - len(train[1]) % shards, config.batch_size, shards)
  input_shape = tuple(train[0].shape[1:])
  schedule = learning_rate_schedule(config, steps)
  spec = model_spec(config, input_shape, NUM_CLASSES)
  history = trainer.run(
    build_model(spec, rngs=nnx.Rngs(config.seed)), create_optimizer(config, steps, schedule), train,
    epochs=config.num_epochs, test=test, batch_size=config.batch_size, seed=config.seed, workdir=workdir, mesh=mesh,
    augment=augment_config(config), steps_per_call=config.steps_per_call, eval_batch_size=config.eval_batch_size,
    compiler_options=compiler_options(config),
    label_smoothing=float(config.label_smoothing), record=config_record(config), resume_safe=RESUME_SAFE,
    learning_rate=schedule, extra_meta={inference.MODEL_META: spec, inference.NORMALIZATION_META: normalization},
    start_time=start_time, progress=lambda label, total: Progress(total, label),
    announce=lambda: log.info("JAX %s on %s; config:\n%s", jax.__version__, jax.devices(), config),
  )  # fmt: skip
  _plot(Path(workdir), history)
  return history


def _plot(workdir: Path, history: list[dict]) -> None:
  """``curves.png`` from ``history``, unless it is newer than ``metrics.jsonl`` (then nothing is written)."""
  curves, metrics = workdir / CURVES_FILE, workdir / METRICS_FILE
  if not history or not parallel.is_main_process() or not metrics.is_file():
    return
  if curves.is_file() and curves.stat().st_mtime_ns >= metrics.stat().st_mtime_ns:
    return  # a finished run rerun: the curves are current (and the workdir may be read-only)
  trainer.writing(CURVES_FILE, workdir, len(history), plot_curves, history, curves)


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path) -> nnx.Module:
  """The model of ``workdir``'s newest intact checkpoint (nothing is moved), with ``config.model.impl``.

  It takes normalised images, as the run trained on; ``jaxconv.training.restore_model(workdir)``
  gives one that takes raw images.
  """
  validate_config(config)
  return inference.restore_model(workdir, normalize=False, impl=config.model.impl)
