"""The command line of the training program: ``experiments/train.py`` and ``experiments/train_lenet.py``.

  python experiments/train.py --config configs/resnet_mnist.py --workdir runs/resnet [--config.key=value ...]

Every refusal (a missing or broken config file, an unknown config field, a bad value, missing or
unprepared data, a workdir held by another run, checkpoints of another config, a diverged loss, a
full or read-only disk) exits with status 1 and one line on stderr, ``<program>: error: <what>``,
without a traceback; ``--verbose`` (or ``JAXCONV_VERBOSE=1``) shows the traceback. A refused start
leaves no work directory behind.
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

VERBOSE_ENV = "JAXCONV_VERBOSE"
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES)

__all__ = ["VERBOSE_ENV", "config_fields", "main"]


def _verbose(argv: Sequence[str]) -> bool:
  """Whether tracebacks are wanted: ``--verbose`` on the command line or ``JAXCONV_VERBOSE`` set (not 0)."""
  return "--verbose" in argv or "--verbose=true" in argv or os.environ.get(VERBOSE_ENV, "0") not in ("", "0")


def _fail(program: str, message: str) -> NoReturn:
  """Exit with status 1 and ``program: error: message`` as one line on stderr."""
  line = " ".join(str(message).split())  # one line, whatever the message held
  sys.exit(f"{program}: error: {line}")


def config_fields(config: Any, prefix: str = "config") -> list[str]:
  """Every dotted field of an ``ml_collections.ConfigDict`` (``config.data.dir``, ...), blocks included."""
  names = []
  for key, value in config.items():
    name = f"{prefix}.{key}"
    names.append(name)
    if hasattr(value, "items") and not isinstance(value, dict):
      names += config_fields(value, name)
  return names


def _config_path(args: Sequence[str]) -> str | None:
  """The value of the last ``--config`` in ``args`` (``--config=PATH`` or ``--config PATH``), as absl reads it."""
  path = None
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(args):
      path = args[i + 1]
  return path


def _check_overrides(args: Sequence[str]) -> None:
  """Refuse a missing config file or an unknown ``--config.<field>``, naming it, before absl parses anything."""
  path = _config_path(args)
  if path is None:
    return  # absl says the flag is required
  if not Path(path).is_file():
    raise ValueError(f"config file {path} does not exist")
  try:
    config = runpy.run_path(path)["get_config"]()
  except Exception as e:
    raise ValueError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
  known = config_fields(config)
  for arg in args:
    if not arg.startswith("--config."):
      continue
    name = arg[2:].split("=", 1)[0]
    if name not in known:
      close = difflib.get_close_matches(name, known, n=1)
      hint = f" (did you mean --{close[0]}?)" if close else ""
      raise ValueError(f"unknown config field --{name}{hint}; {path} has no such field")


def _refusals() -> tuple[type[BaseException], ...]:
  """The errors a user can act on, reported as one line (the messages name the field, epoch, file or holder)."""
  from jaxconv.training import ConfigMismatchError, NoIntactCheckpointError, NonFiniteLossError, WorkdirLockedError

  return (
    ValueError, TypeError, ConfigMismatchError, NoIntactCheckpointError, NonFiniteLossError, WorkdirLockedError,
    FileNotFoundError, ImportError,
  )  # fmt: skip


def main(program: str, start_time: float, describe: str) -> None:
  """Parse the command line, then train: ``program`` names the script in messages, ``describe`` its help text.

  Args:
    program: the script's file name (``train.py``), the prefix of every error line.
    start_time: ``time.perf_counter()`` at the script's start; ``elapsed_seconds`` counts from it.
    describe: one line for ``--help``.
  """
  from absl import app, flags
  from ml_collections import config_flags

  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and curves.png.")
  config_flags.DEFINE_config_file("config", None, describe, lock_config=True)
  flags.DEFINE_bool("verbose", False, f"Show tracebacks of refused runs (or set {VERBOSE_ENV}=1).")
  flags.mark_flags_as_required(["config", "workdir"])
  verbose = _verbose(sys.argv)

  def parse(argv: list[str]) -> list[str]:
    try:
      _check_overrides(argv[1:])
      return flags.FLAGS(argv)
    except Exception as e:
      if verbose:
        raise
      _fail(program, e)

  app.run(lambda argv: _run(argv, program, start_time, verbose), flags_parser=parse)


def _run(argv: list[str], program: str, start_time: float, verbose: bool) -> None:
  """Train the configured model, reporting each refusal as one line."""
  from absl import flags
  from absl import logging as absl_logging

  if len(argv) > 1:
    _fail(program, f"unexpected arguments: {argv[1:]}")
  # The epoch lines at INFO; orbax's per-save chatter and tfds's notes (through absl) only from ERROR up.
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("jaxconv").setLevel(logging.INFO)
  config = flags.FLAGS.config
  call: Callable[[], Any] = lambda: _train(config, flags.FLAGS.workdir, start_time)
  if verbose:
    call()
    return
  try:
    call()
  except _refusals() as e:
    _fail(program, e)
  except OSError as e:
    if e.errno not in DISK_ERRORS:
      raise
    _fail(program, e.strerror if e.filename is None else e)


def _train(config: Any, workdir: str, start_time: float) -> None:
  """``train_and_evaluate`` (which logs the devices and the config once nothing can refuse the run)."""
  from experiments.lenet.train import train_and_evaluate
  from jaxconv.training import checkpoint

  checkpoint.quiet_writer_threads()  # a failed save is reported once
  train_and_evaluate(config, workdir, start_time=start_time)
