"""``fit``: train any NNX classifier with any Optax optimiser, resumably, on one device or a mesh.

``fit`` is the public call; ``run`` is the same loop with the knobs the repository's programs add
(label smoothing, an evaluation batch size, their config checked on resume, a progress bar, the
learning rate in each record, what ``restore_model`` needs). Both:

1. check every argument (types, shapes, label ranges, the model's output), raising before anything
   is compiled or written;
2. place the data on the mesh, split the model into its graph, parameters and other variables
   (``state.create_state``), in ``model.train()`` mode for the steps and ``model.eval()`` mode for
   evaluation;
3. with a ``workdir``, take its lock, restore the newest intact checkpoint (refusing one written with
   another batch size, seed, data, model or optimiser) and rewrite ``metrics.jsonl`` from it;
4. per epoch: the compiled steps (``loop.run_epoch``), a NaN/inf check naming the epoch, evaluation,
   a record, a verified checkpoint and a line of ``metrics.jsonl``;
5. put the trained variables back into ``model`` (``nnx.update``).

Checkpoints hold ``params``, ``opt_state`` and ``rest`` (the non-parameter variables: batch
statistics, RNG keys as raw key data, RNG counts), so a resumed run continues exactly where the
uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import numbers
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh

from jaxconv import parallel
from jaxconv.training.augment import AugmentConfig
from jaxconv.training.checkpoint import Checkpoints, ConfigMismatchError, abstract, config_differences
from jaxconv.training.lock import WorkdirLock
from jaxconv.training.loop import (
  check_compiler_options,
  check_finite_loss,
  check_labels,
  compile_steps,
  epoch_batches,
  epoch_key,
  place_eval,
  place_train,
  run_epoch,
  steps_per_epoch,
)
from jaxconv.training.records import METRICS_FILE, append_metrics, metrics_current, write_metrics
from jaxconv.training.state import Batch, TrainState, create_state, model_variables
from jaxconv.training.steps import Metrics, mean_loss, summarize

__all__ = ["CHECKPOINT_DIR", "fit", "restore", "run", "train_epoch", "writing"]

CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2

log = logging.getLogger("jaxconv.training")

ArrayPair = tuple[Any, Any]


class ProgressBar(Protocol):
  """What ``run``'s ``progress(label, total)`` returns: a bar redrawn with the steps done."""

  enabled: bool

  def update(self, done: int, note: str = "") -> None: ...

  def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# arguments


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
  """``value`` if it is an int (not a bool) in ``[low, high)``; else ``TypeError``/``ValueError`` naming ``name``."""
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    raise TypeError(f"{name} must be an int; got {value!r} ({type(value).__name__})")
  value = int(value)
  if value < low or (high is not None and value >= high):
    bound = f">= {low}" if high is None else f"in [{low}, {'2**63' if high == 2**63 else high})"
    raise ValueError(f"{name} must be an int {bound}; got {value!r}")
  return int(value)


def _split_arrays(name: str, split: Any) -> tuple[np.ndarray, np.ndarray]:
  """``(images, labels)`` of the argument ``name`` as numpy arrays, checked: float images, int labels, equal counts."""
  if not isinstance(split, (tuple, list)) or len(split) != 2:
    raise TypeError(f"{name} must be a pair (images, labels); got {type(split).__name__}")
  images, labels = np.asarray(split[0]), np.asarray(split[1])
  if images.ndim < 2:
    raise ValueError(f"{name} images must be (N, *spatial, C); got shape {images.shape}")
  if not np.issubdtype(images.dtype, np.floating):
    raise TypeError(
      f"{name} images must have a floating dtype; got {images.dtype} (scale integer images first, e.g. images / 255)"
    )
  if labels.ndim != 1:
    raise ValueError(f"{name} labels must be (N,) ints; got shape {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"{name} labels must be integers; got {labels.dtype}")
  if len(images) != len(labels):
    raise ValueError(f"{name} has {len(images)} images but {len(labels)} labels")
  if len(images) == 0:
    raise ValueError(f"{name} has no examples")
  return images, labels.astype(np.int32)


def _data_mesh(mesh: Mesh | None) -> Mesh:
  """A mesh over the devices of ``mesh`` (default: the first device) with one Auto axis named ``"data"``.

  Whatever the user's axis is called and typed (``jax.make_mesh``'s default Explicit, Auto,
  ``jaxconv.parallel.make_mesh``), the loop places its data and state by this one.
  """
  if mesh is None:
    return parallel.make_mesh(1)
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh or None; got {type(mesh).__name__}")
  if mesh.devices.ndim != 1:
    raise ValueError(f"mesh must be 1-D (one axis that splits the batch); got axes {dict(mesh.shape)}")
  if mesh.axis_names == (parallel.DATA_AXIS,) and mesh.axis_types == (AxisType.Auto,):
    return mesh
  return Mesh(mesh.devices, (parallel.DATA_AXIS,), axis_types=(AxisType.Auto,))


def _num_classes(model: nnx.Module, image_shape: tuple[int, ...], dtype: np.dtype) -> int:
  """The number of logits ``model`` gives per image, from its output shape alone (traced, nothing compiled)."""
  graphdef, variables = nnx.split(model)
  images = jax.ShapeDtypeStruct((2, *image_shape), dtype)
  out = jax.eval_shape(lambda v, x: nnx.merge(graphdef, v, copy=True)(x), variables, images)
  if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 2:
    shape = getattr(out, "shape", type(out).__name__)
    raise ValueError(
      f"model must map images (N, {', '.join(map(str, image_shape))}) to logits (N, K); it gives {shape}"
    )
  return int(out.shape[1])


@dataclasses.dataclass(frozen=True)
class _Args:
  """The checked arguments of one run."""

  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray] | None
  epochs: int
  batch_size: int
  eval_batch_size: int
  seed: int
  steps_per_call: int
  mesh: Mesh
  augment: AugmentConfig | None
  workdir: Path | None
  compiler_options: dict[str, str | bool]


def _check_args(
  model: Any, optimizer: Any, train: Any, test: Any, epochs: Any, batch_size: Any, eval_batch_size: Any, seed: Any,
  workdir: Any, mesh: Any, augment: Any, steps_per_call: Any, compiler_options: Any,
) -> _Args:  # fmt: skip
  """Every argument of ``run`` checked, naming the argument, before anything is compiled or written."""
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module; got {type(model).__name__}")
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}")
  epochs = _check_int("epochs", epochs, 1)
  batch_size = _check_int("batch_size", batch_size, 1)
  eval_batch_size = batch_size if eval_batch_size is None else _check_int("eval_batch_size", eval_batch_size, 1)
  seed = _check_int("seed", seed, 0, 2**63)  # numpy's generators (the shuffles) take seeds >= 0 only
  steps_per_call = _check_int("steps_per_call", steps_per_call, 1)
  compiler_options = check_compiler_options(compiler_options)
  if augment is not None and not isinstance(augment, AugmentConfig):
    raise TypeError(f"augment must be a jaxconv.training.AugmentConfig or None; got {type(augment).__name__}")
  if workdir is not None and not isinstance(workdir, (str, os.PathLike)):
    raise TypeError(f"workdir must be a path or None; got {type(workdir).__name__}")
  data_mesh = _data_mesh(mesh)
  shards = parallel.num_shards(data_mesh)
  for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
    if value % shards:
      raise ValueError(f"{name}={value} must be a multiple of the {shards} devices of mesh")
  train_x, train_y = _split_arrays("train", train)
  usable = len(train_y) - len(train_y) % shards
  if batch_size > usable:
    raise ValueError(f"batch_size={batch_size} is larger than the training set ({usable} examples)")
  if augment is not None and augment.enabled and train_x.ndim != 4:
    raise ValueError(f"augment needs images (N, H, W, C); train images have shape {train_x.shape}")
  test_pair = None
  if test is not None:
    test_x, test_y = _split_arrays("test", test)
    if test_x.shape[1:] != train_x.shape[1:]:
      raise ValueError(
        f"test images must have the shape of the train images: train {train_x.shape[1:]}, test {test_x.shape[1:]}"
      )
    test_pair = (test_x, test_y)
  num_classes = _num_classes(model, train_x.shape[1:], train_x.dtype)
  check_labels(train_y, num_classes, "train")
  if test_pair is not None:
    check_labels(test_pair[1], num_classes, "test")
  return _Args(
    (train_x, train_y), test_pair, epochs, batch_size, eval_batch_size, seed, steps_per_call, data_mesh, augment,
    None if workdir is None else Path(workdir), compiler_options,
  )  # fmt: skip


# --------------------------------------------------------------------------------------------
# checkpoints


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _saved(state: TrainState) -> dict[str, Any]:
  """The checkpoint items of ``state``: typed PRNG keys as their raw data; no ``rest`` item when it is empty."""
  items = {"params": state.params, "opt_state": state.opt_state}
  if jax.tree.leaves(state.rest):
    items["rest"] = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state.rest)
  return items


def _from_saved(items: Mapping[str, Any], like: TrainState) -> TrainState:
  """``TrainState`` from restored items, keys rewrapped as in ``like``."""
  rest = like.rest
  if "rest" in items:
    rest = jax.tree.map(
      lambda data, old: jax.random.wrap_key_data(data, impl=jax.random.key_impl(old)) if _is_key(old) else data,
      items["rest"],
      like.rest,
    )
  return TrainState(items["params"], items["opt_state"], rest)


def _targets(state: TrainState, sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """Restore targets (shapes, dtypes, layouts) of ``state``'s checkpoint items."""
  return {name: abstract(tree, sharding) for name, tree in _saved(state).items()}


def _fingerprint(tree: Any) -> str:
  """``"N values in K arrays, structure <digest>"``: what a checkpoint's arrays must match, short enough to print."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  described = "".join(f"{jax.tree_util.keystr(p)}|{np.dtype(x.dtype).str if not _is_key(x) else 'key'}|{x.shape};"
                      for p, x in leaves)  # fmt: skip
  size = sum(int(np.prod(x.shape)) for _, x in leaves)
  return f"{size} values in {len(leaves)} arrays, structure {hashlib.sha256(described.encode()).hexdigest()[:12]}"


def _run_record(args: _Args, state: TrainState, label_smoothing: float) -> dict[str, Any]:
  """What a resumed run must share with the checkpoint's run: the data, the batches, the model and optimiser."""
  return {
    "train_examples": len(args.train[1]),
    "batch_size": args.batch_size,
    "seed": args.seed,
    "augment": None if args.augment is None else dataclasses.asdict(args.augment),
    "label_smoothing": float(label_smoothing),
    "model": _fingerprint(state.params),
    "model_state": _fingerprint(state.rest),
    "optimizer_state": _fingerprint(state.opt_state),
  }


def _check_resume(
  directory: Path, run_record: dict, record: Mapping[str, Any] | None, resume_safe: Iterable[str],
  input_shape: tuple[int, ...] | None,
) -> Callable[[dict[str, Any]], None]:  # fmt: skip
  """``check(meta)`` for ``Checkpoints.restore``: refuses a checkpoint of another run, naming what differs."""

  def check(meta: dict[str, Any]) -> None:
    differences = []
    if record is not None:
      differences += config_differences(meta.get("config", {}), dict(record), resume_safe)
    differences += [f"fit.{d}" for d in config_differences(meta.get("fit", {}), run_record)]
    saved_shape = tuple(meta.get("input_shape", ()))
    if input_shape is not None and saved_shape != input_shape:
      differences.append(f"image size (H, W, C): {saved_shape} -> {input_shape}")
    if differences:
      raise ConfigMismatchError(
        f"the checkpoints under {directory} were written with another config; resuming would change "
        f"{', '.join(differences)} (checkpoint -> now). Use another workdir, or the checkpoint's values"
      )

  return check


def _disk_full(raised: BaseException) -> bool:
  """Whether ``raised`` or one of its causes is ENOSPC (orbax and tensorstore wrap it, or only keep its text)."""
  error: BaseException | None = raised
  while error is not None:
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def writing(what: str, workdir: Path, epoch: int, call: Callable[..., Any], *args: Any) -> Any:
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


# --------------------------------------------------------------------------------------------
# the loop


def train_epoch(
  train_steps: Callable[..., Any], state: TrainState, data: Batch, idx: jax.Array, steps_per_call: int, label: str,
  key: jax.Array, progress: Callable[[str, int], ProgressBar] | None = None,
) -> tuple[TrainState, Metrics]:  # fmt: skip
  """One epoch of ``loop.run_epoch``, with a progress bar ``progress(label, steps)`` if given."""
  bar = None if progress is None else progress(label, idx.shape[0])
  update = None
  if bar is not None and bar.enabled:
    update = lambda done, metrics: bar.update(done, f"loss {mean_loss(metrics):.4f}")
  state, metrics = run_epoch(train_steps, state, data, idx, steps_per_call, update, key)
  if bar is not None:
    bar.close()
  return state, metrics


def fit(
  model: nnx.Module,
  optimizer: optax.GradientTransformation,
  train: ArrayPair,
  *,
  epochs: int,
  test: ArrayPair | None = None,
  batch_size: int = 128,
  seed: int = 0,
  workdir: str | os.PathLike | None = None,
  mesh: Mesh | None = None,
  augment: AugmentConfig | None = None,
  steps_per_call: int = 50,
  compiler_options: Mapping[str, str | bool] | None = None,
) -> list[dict[str, Any]]:
  """Train ``model`` in place with ``optimizer`` on ``train``, evaluating on ``test`` after every epoch.

  Each epoch takes the training set in a fresh seeded shuffle (the last partial batch dropped), in
  compiled calls of ``steps_per_call`` steps. The steps run with the model in ``model.train()``
  mode: ``nnx.BatchNorm`` normalises with the batch's statistics and updates its running averages;
  ``nnx.Dropout`` draws its masks from the model's own ``nnx.Rngs`` streams, advanced every step.
  Evaluation runs in ``model.eval()`` mode (running averages, no dropout). Fixed ``seed`` and model
  initialisation give bit-identical results.

  Args:
    model: any ``flax.nnx.Module`` mapping images ``(N, *spatial, C)`` to logits ``(N, K)``. On
      return it holds the trained parameters, batch statistics and RNG state, in training mode;
      call ``model.eval()`` before using it for inference.
    optimizer: any ``optax.GradientTransformation`` (its schedule counts steps).
    train: ``(images, labels)``, numpy or jax arrays: float images ``(N, *spatial, C)`` and int
      labels ``(N,)`` in ``[0, K)``.
    epochs: the total number of epochs (>= 1), resumed ones included.
    test: ``(images, labels)`` like ``train``, with images of the same shape, or None.
    batch_size: the global batch (a multiple of the mesh's devices, at most the training set).
    seed: the shuffles' and the augmentation's seed, an int in ``[0, 2**63)``.
    workdir: a directory for ``metrics.jsonl`` (one line per epoch), verified checkpoints (one per
      epoch, the newest two kept) and a lock (one live run per directory). Rerunning with more
      ``epochs`` resumes from the newest intact checkpoint (parameters, batch statistics, RNG and
      optimiser state) and gives what an uninterrupted run gives. A checkpoint written with another
      batch size, seed, training set, augmentation, model or optimiser is refused.
    mesh: a 1-D ``jax.sharding.Mesh`` (any axis name, Explicit or Auto): the batch is split over its
      devices and the state replicated; ``nnx.BatchNorm`` statistics are over the global batch, and
      each device draws its own dropout masks. None: one device.
    augment: an ``AugmentConfig`` of random shifts and warps applied to each training batch on the
      device (images ``(N, H, W, C)``), or None.
    steps_per_call: training steps per compiled call (the loop returns to Python between calls).
    compiler_options: XLA options the training and evaluation programs are compiled with
      (``DebugOptions`` field names, as in ``XLA_FLAGS`` without the dashes, to values), or None
      for XLA's defaults; an option XLA does not know is refused before anything is compiled.
      The training programs pass ``{"xla_cpu_experimental_ynn_fusion_type":
      "LIBRARY_FUSION_TYPE_REDUCE"}``: dense layers' dots on XLA's own code rather than YNNPACK's
      (``docs/training.md``).

  Returns:
    One dict per epoch, resumed epochs included: ``epoch``, ``train_loss``, ``train_accuracy``,
    ``test_loss`` and ``test_accuracy`` (with ``test``), ``epoch_seconds``, ``images_per_second``,
    ``eval_seconds``, ``compile_seconds`` and ``elapsed_seconds`` (since the call). Accuracies are
    fractions in [0, 1]; losses are mean cross-entropies.

  Raises:
    TypeError, ValueError: a bad argument, named, before anything is compiled or written.
    NonFiniteLossError: the training loss became NaN or infinite (the epoch is named, not saved).
    ConfigMismatchError: ``workdir`` holds checkpoints of another run.
    WorkdirLockedError: another live process holds ``workdir``.
    NoIntactCheckpointError: every checkpoint under ``workdir`` is damaged (they are moved aside).
  """
  return run(
    model, optimizer, train, epochs=epochs, test=test, batch_size=batch_size, seed=seed, workdir=workdir, mesh=mesh,
    augment=augment, steps_per_call=steps_per_call, compiler_options=compiler_options,
  )  # fmt: skip


def run(
  model: nnx.Module,
  optimizer: optax.GradientTransformation,
  train: ArrayPair,
  *,
  epochs: int,
  test: ArrayPair | None = None,
  batch_size: int = 128,
  seed: int = 0,
  workdir: str | os.PathLike | None = None,
  mesh: Mesh | None = None,
  augment: AugmentConfig | None = None,
  steps_per_call: int = 50,
  compiler_options: Mapping[str, str | bool] | None = None,
  eval_batch_size: int | None = None,
  label_smoothing: float = 0.0,
  record: Mapping[str, Any] | None = None,
  resume_safe: Iterable[str] = (),
  learning_rate: Callable[[int], Any] | None = None,
  extra_meta: Mapping[str, Any] | None = None,
  start_time: float | None = None,
  progress: Callable[[str, int], ProgressBar] | None = None,
  announce: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
  """``fit`` with the options of the repository's training programs.

  Args:
    model, optimizer, train, epochs, test, batch_size, seed, workdir, mesh, augment, steps_per_call,
    compiler_options: as for ``fit``. On several processes (``jax.distributed``), every process passes the whole
      arrays and places its own rows; process 0 alone writes ``metrics.jsonl`` and holds the lock.
    eval_batch_size: the evaluation batch (default ``batch_size``).
    label_smoothing: the training loss's targets are ``optax.smooth_labels`` of the one-hot labels.
    record: a JSON-like config stored in each checkpoint; a resume whose ``record`` differs outside
      ``resume_safe`` (dotted field names or prefixes) is refused, naming the fields.
    learning_rate: a schedule of the step; each record gets ``learning_rate`` at the epoch's end.
    extra_meta: more JSON stored in each checkpoint's metadata (``restore_model`` reads it).
    start_time: the ``time.perf_counter()`` that ``elapsed_seconds`` counts from (default: now).
    progress: ``progress(label, steps)`` -> a bar with ``enabled``, ``update(done, note)`` and ``close()``.
    announce: called once every refusal has passed (arguments, lock, resume check), before compiling.

  Returns:
    ``fit``'s records, with ``learning_rate`` when a schedule is given.

  Raises:
    As ``fit``; and ``OSError`` (``EROFS``) when epochs remain but ``workdir`` is read-only,
    ``OSError`` (``ENOSPC``) naming the epoch when the disk is full.
  """
  start_time = time.perf_counter() if start_time is None else start_time
  args = _check_args(
    model, optimizer, train, test, epochs, batch_size, eval_batch_size, seed, workdir, mesh, augment, steps_per_call,
    compiler_options,
  )  # fmt: skip
  if args.workdir is None:
    return _train(model, optimizer, args, None, label_smoothing, record, resume_safe, learning_rate, extra_meta,
                  start_time, progress, announce)  # fmt: skip
  main = parallel.is_main_process()
  created = not args.workdir.exists()
  args.workdir.mkdir(parents=True, exist_ok=True)
  trained = False
  try:
    with WorkdirLock(args.workdir) if main else contextlib.nullcontext() as lock:
      read_only = bool(lock and lock.read_only)
      history = _train(model, optimizer, args, (main, read_only), label_smoothing, record, resume_safe,
                       learning_rate, extra_meta, start_time, progress, announce)  # fmt: skip
      trained = True
      return history
  finally:
    if created and not trained:
      _remove_if_unused(args.workdir)


def _remove_if_unused(workdir: Path) -> None:
  """Remove ``workdir`` (created by this run) if nothing but its lock and empty folders are in it."""
  files = [p for p in workdir.rglob("*") if p.is_file() and p.name != "lock"]
  if files:
    return
  for path in sorted(workdir.rglob("*"), reverse=True):
    with contextlib.suppress(OSError):
      path.rmdir() if path.is_dir() else path.unlink()
  with contextlib.suppress(OSError):
    workdir.rmdir()


def _train(
  model: nnx.Module, optimizer: optax.GradientTransformation, args: _Args, workdir_mode: tuple[bool, bool] | None,
  label_smoothing: float, record: Mapping[str, Any] | None, resume_safe: Iterable[str],
  learning_rate: Callable[[int], Any] | None, extra_meta: Mapping[str, Any] | None, start_time: float,
  progress: Callable[[str, int], ProgressBar] | None, announce: Callable[[], None] | None,
) -> list[dict[str, Any]]:  # fmt: skip
  """The body of ``run`` once the arguments are checked and the workdir (if any) is held."""
  mesh = args.mesh
  train_data = place_train(*args.train, mesh)
  test_data = None if args.test is None else place_eval(*args.test, mesh)
  num_train = int(train_data.labels.shape[0])
  steps = steps_per_epoch(num_train, args.batch_size, parallel.num_shards(mesh))
  input_shape = tuple(args.train[0].shape[1:])
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  model.train()
  graphdef, state = create_state(model, optimizer)
  state = parallel.replicate(state, mesh)
  done, history = 0, []
  checkpoints = None
  main, read_only = workdir_mode if workdir_mode is not None else (parallel.is_main_process(), False)
  with contextlib.ExitStack() as stack:
    if args.workdir is not None:
      workdir = args.workdir
      directory = workdir / CHECKPOINT_DIR
      checkpoints = stack.enter_context(Checkpoints(directory, KEEP_CHECKPOINTS, create=not read_only))
      run_record = _run_record(args, state, label_smoothing)
      check = _check_resume(directory, run_record, record, resume_safe, input_shape)
      restored = checkpoints.restore(_targets(state), check, set_aside=main and not read_only)
      if restored is not None:
        done, items, meta = restored
        state, history = _from_saved(items, state), meta["history"]
      # The checkpoint is the record of finished epochs: a line appended after it, or one missing
      # because a run was killed between saving and appending, is rewritten from it.
      if main and not read_only:
        write_metrics(workdir / METRICS_FILE, history)
      elif main and not metrics_current(workdir / METRICS_FILE, history):
        log.warning(
          "%s is read-only: its %s does not match the checkpoint's %d epochs and stays so",
          workdir, METRICS_FILE, len(history),
        )  # fmt: skip
      if done and main:
        log.info("resuming from %s after epoch %d", workdir, done)
      if done < args.epochs and read_only:
        raise OSError(errno.EROFS, f"{workdir} is read-only: cannot train epochs {done + 1}..{args.epochs} there")
    if announce is not None and main:
      announce()
    if done < args.epochs:
      t0 = time.perf_counter()
      train_steps, evaluate = compile_steps(
        graphdef, optimizer, state, train_data, test_data, args.batch_size, args.eval_batch_size, mesh,
        augmentation=args.augment, label_smoothing=float(label_smoothing), eval_graphdef=eval_graphdef,
        compiler_options=args.compiler_options,
      )  # fmt: skip
      compile_seconds = time.perf_counter() - t0
    for epoch in range(done + 1, args.epochs + 1):
      t0 = time.perf_counter()
      idx = epoch_batches(args.seed, epoch, num_train, args.batch_size, mesh)
      label, key = f"epoch {epoch}/{args.epochs}", epoch_key(args.seed, epoch)
      state, train_metrics = train_epoch(train_steps, state, train_data, idx, args.steps_per_call, label, key, progress)
      check_finite_loss(train_metrics, epoch)  # before anything of the epoch is saved
      t1 = time.perf_counter()
      entry: dict[str, Any] = {"epoch": epoch, **summarize(train_metrics, "train")}
      if evaluate is not None:
        entry.update(summarize(jax.device_get(evaluate(model_variables(state), test_data)), "test"))
      entry.update({
        "epoch_seconds": t1 - t0,
        "images_per_second": steps * args.batch_size / (t1 - t0),
        "eval_seconds": time.perf_counter() - t1,
        "compile_seconds": compile_seconds,
        "elapsed_seconds": time.perf_counter() - start_time,
      })  # fmt: skip
      if learning_rate is not None:
        entry["learning_rate"] = float(learning_rate(epoch * steps))
      entry = {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in entry.items()}
      history.append(entry)
      if checkpoints is not None and args.workdir is not None:
        meta = {
          "input_shape": input_shape, "history": history, "fit": run_record,
          **({} if record is None else {"config": dict(record)}), **(extra_meta or {}),
        }  # fmt: skip
        writing("the checkpoint", args.workdir, epoch, checkpoints.save, epoch, _saved(state), meta)  # every process
        if main:
          writing(METRICS_FILE, args.workdir, epoch, append_metrics, args.workdir / METRICS_FILE, entry)
      if main:
        log.info(
          "epoch %d: train loss %.4f acc %.4f%s, %.2fs (%.0f images/s)",
          epoch, entry["train_loss"], entry["train_accuracy"],
          f", test loss {entry['test_loss']:.4f} acc {entry['test_accuracy']:.4f}" if "test_loss" in entry else "",
          entry["epoch_seconds"], entry["images_per_second"],
        )  # fmt: skip
  nnx.update(model, state.params, state.rest)
  return history


# --------------------------------------------------------------------------------------------
# restoring


def restore(model: nnx.Module, workdir: str | os.PathLike) -> nnx.Module:
  """Load the newest intact checkpoint under ``workdir`` (written by ``fit``) into ``model``, in place.

  Nothing under ``workdir`` is moved or written; a damaged newer checkpoint is skipped with a warning.

  Args:
    model: a model of the architecture that was trained (for example freshly initialised the same way).
    workdir: the ``workdir`` given to ``fit``.

  Returns:
    ``model``, holding the checkpoint's parameters, batch statistics and RNG state (on one device).

  Raises:
    FileNotFoundError: there is no checkpoint under ``workdir``.
    ConfigMismatchError: the checkpoint's parameters do not fit ``model``.
    NoIntactCheckpointError: every checkpoint is damaged.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module; got {type(model).__name__}")
  directory = Path(workdir) / CHECKPOINT_DIR
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint under {directory}")
  _, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]  # flax types it as variadic
  state = TrainState(params, None, rest)
  expected = {"model": _fingerprint(params), "model_state": _fingerprint(rest)}

  def check(meta: dict[str, Any]) -> None:
    saved = {k: meta.get("fit", {}).get(k) for k in expected}
    differences = config_differences(saved, expected)
    if differences:
      raise ConfigMismatchError(
        f"the checkpoints under {directory} hold another model: {', '.join(differences)} (checkpoint -> model)"
      )

  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  targets = {k: v for k, v in _targets(state, device).items() if k != "opt_state"}
  with Checkpoints(directory, KEEP_CHECKPOINTS, create=False) as checkpoints:
    restored = checkpoints.restore(targets, check, set_aside=False)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint under {directory}")
  loaded = _from_saved({**restored[1], "opt_state": None}, state)
  nnx.update(model, loaded.params, loaded.rest)
  return model
