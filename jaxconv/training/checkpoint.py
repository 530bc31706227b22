"""Orbax checkpoints that can be trusted: a checksum of the saved arrays, checked on restore.

Each step directory holds the array items (e.g. ``params`` and ``opt_state``) and one JSON item,
``meta``: the caller's metadata (the config, the metrics so far, ...) and ``sha256``, one digest per
array item, computed from the arrays in memory before they are written. ``Checkpoints.restore``
tries the steps newest first; a step whose metadata or arrays cannot be read, or whose arrays do
not hash to the recorded digest, is reported by step and moved aside to ``<directory>.damaged/``
(nothing is deleted), and the next older step is tried. The caller's ``check(meta)`` runs before
any array is read, so a checkpoint of another model or optimiser is refused (``config_differences``,
``ConfigMismatchError``) rather than mistaken for a damaged one.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
  "Checkpoints",
  "ConfigMismatchError",
  "NoIntactCheckpointError",
  "abstract",
  "config_differences",
  "quiet_writer_threads",
  "tree_digest",
]

META = "meta"  # the JSON item of every step
DIGESTS = "sha256"  # meta's key of {item: digest}

log = logging.getLogger(__name__)


class NoIntactCheckpointError(RuntimeError):
  """Every checkpoint of a directory was damaged (and moved aside)."""


class ConfigMismatchError(ValueError):
  """A checkpoint was written with another config than the one resuming from it."""


def tree_digest(tree: Any) -> str:
  """SHA-256 of the arrays of ``tree``: each leaf's key path, dtype, shape and bytes, in tree order."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    array = _host_array(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


def _host_array(leaf: Any) -> np.ndarray:
  """A numpy copy of ``leaf``; of a replicated global array, this process's first replica."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    if not leaf.is_fully_replicated:
      raise ValueError(f"cannot checksum an array sharded over several processes (sharding {leaf.sharding})")
    return np.asarray(leaf.addressable_data(0))
  return np.asarray(leaf)


def abstract(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """Shape-and-dtype stand-ins for the arrays of ``tree``, a restore target; ``sharding`` overrides their layout."""
  structs = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return (
    structs
    if sharding is None
    else jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), structs)
  )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], safe: Iterable[str] = ()) -> list[str]:
  """``"field: saved -> current"`` for every dotted field that differs, but ``safe`` fields and prefixes.

  Both are JSON-like nested dicts; a field that one of them lacks shows as ``<absent>``.
  """
  safe = tuple(safe)
  flat_saved, flat_current = _flatten(saved), _flatten(current)
  differences = []
  for name in sorted(flat_saved.keys() | flat_current.keys()):
    if any(name == s or name.startswith(s + ".") for s in safe):
      continue
    old, new = flat_saved.get(name, "<absent>"), flat_current.get(name, "<absent>")
    if old != new:
      differences.append(f"{name}: {old!r} -> {new!r}")
  return differences


class Checkpoints:
  """Steps of array items plus JSON metadata under ``directory``, the newest ``max_to_keep`` kept.

  Writes are synchronous: when ``save`` returns, the step is on disk. A context manager.
  """

  def __init__(self, directory: str | Path, max_to_keep: int = 2, create: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def close(self) -> None:
    """Release orbax's resources."""
    self.manager.close()

  def steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write the pytrees ``items`` (name -> arrays) and the JSON ``meta`` as ``step``, with the items' digests."""
    digests = {name: tree_digest(tree) for name, tree in items.items()}
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    self.manager.save(step, args=ocp.args.Composite(**args, **{META: ocp.args.JsonSave({**meta, DIGESTS: digests})}))
    self.manager.wait_until_finished()

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON metadata of ``step`` (its digests included)."""
    meta = self.manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    if not isinstance(meta, dict) or not isinstance(meta.get(DIGESTS), dict):
      raise ValueError(f"its metadata has no {DIGESTS!r} record of the arrays")
    return meta

  def restore(
      self, targets: Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any]],
      check: Callable[[dict[str, Any]], None] | None = None, set_aside: bool = True,
  ) -> tuple[int, dict[str, Any], dict[str, Any]] | None:  # fmt: skip
    """``(step, items, meta)`` of the newest intact step, or None if nothing was saved.

    ``targets`` maps item names to restore targets (arrays or ``abstract`` stand-ins), or is a
    function of the step's ``meta`` giving them; only those items are read and verified.
    ``check(meta)`` may raise to refuse the step (it is left in place). A damaged step is logged
    and, with ``set_aside``, moved to ``<directory>.damaged/``; otherwise skipped.
    Raises ``NoIntactCheckpointError`` if steps exist but none is intact.
    """
    damaged = []
    for step in reversed(self.steps()):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # anything orbax, tensorstore or json raise on a damaged step
        damaged.append(self._damaged(step, f"unreadable metadata ({_reason(e)})", set_aside))
        continue
      if check is not None:
        check(meta)
      try:
        items = self._read_items(step, targets(meta) if callable(targets) else targets, meta[DIGESTS])
      except Exception as e:
        damaged.append(self._damaged(step, _reason(e), set_aside))
        continue
      return step, items, meta
    if damaged:
      raise NoIntactCheckpointError(f"no intact checkpoint under {self.directory}: " + "; ".join(damaged))
    return None

  def _read_items(self, step: int, targets: Mapping[str, Any], digests: Mapping[str, str]) -> dict[str, Any]:
    """The items ``targets`` of ``step``, each checked against its recorded digest."""
    missing = sorted(set(targets) - set(digests))
    if missing:
      raise ValueError(f"no digest recorded for {missing}")
    args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    items = {name: restored[name] for name in targets}
    for name, tree in items.items():
      if tree_digest(tree) != digests[name]:
        raise ValueError(f"the arrays of {name!r} do not match their recorded SHA-256")
    return items

  def _damaged(self, step: int, reason: str, set_aside: bool) -> str:
    """Log ``step`` as damaged and, with ``set_aside``, move it out of the manager's sight; returns the report."""
    report = f"checkpoint step {step} is damaged: {reason}"
    if set_aside:
      aside = self.directory.with_name(self.directory.name + ".damaged")
      aside.mkdir(exist_ok=True)
      target = aside / str(step)
      if target.exists():  # an older damaged copy of the same step: keep both
        target = aside / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
      shutil.move(str(self.directory / str(step)), target)
      self.manager.reload()
      report += f"; moved to {target}"
    log.warning("%s", report)
    return report


def quiet_writer_threads() -> None:
  """Silence the echoes of a failed save in orbax's and tensorstore's threads, for a command line's output.

  ``Checkpoints.save`` raises the failure itself; meanwhile orbax logs it from each writer thread
  with a traceback, and tensorstore's callbacks raise "Event loop is closed" into the void after
  orbax's event loop stopped, and asyncio logs the gathered futures whose error nobody read: on a
  full disk some 40 tracebacks of the one error. Process-wide.
  """
  logging.getLogger("absl").addFilter(_without_thread_failures)
  logging.getLogger("asyncio").addFilter(_without_thread_failures)
  default_hook = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
      default_hook(unraisable)

  sys.unraisablehook = hook


def _without_thread_failures(record: logging.LogRecord) -> bool:
  """False for the logs of a failed writer thread or future (whose error ``save`` raises)."""
  message = record.getMessage()
  return "_SignalingThread.run() raised an exception" not in message and "exception was never retrieved" not in message


def _reason(error: BaseException) -> str:
  """The first line of ``error``'s message, with its type (tensorstore's messages run to pages)."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"
