"""The measured kernel choice: ``impl="tuned"`` times every kernel that can serve a call, once per machine.

The first time a geometry and dtype are traced, ``"tuned"`` times forward + input gradient + kernel
gradient (one jitted program per kernel, on random arrays of the call's shapes, best of
``$JAXCONV_TUNED_REPEATS`` runs, default 5, interleaved across kernels) of every registered kernel
that supports the call, user kernels included and the dispatchers (``"auto"``, ``"tuned"``) left
out, and runs the fastest. A fastest kernel that is not the one ``"auto"``'s static rule names is
timed again against it before the choice is stored. The timing runs outside the caller's trace
(``jax.ensure_compile_time_eval``), so ``"tuned"`` may be met first inside ``jax.jit``, ``jax.grad``
or ``jax.vmap``.

The choice is stored in ``tuned.json`` under the cache directory (``cache_path()``):
``$JAXCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxconv``, else ``~/.cache/jaxconv``. Its format::

    {"format": 1,
     "machines": {"<id>": {"cpu": ..., "isa": [...], "cores": ..., "backend": ..., "device": ...,
                           "jax": ..., "jaxlib": ..., "onednn": ..., "jaxconv": ..., "xla_flags": ...,
                           "settings": {...}}},
     "choices": {"<id> <geometry>": {"impl": ..., "ms": {kernel: best ms}, "candidates": [...],
                                     "repeats": ..., "date": ...}}}

``<id>`` is a hash of the machine entry (CPU model, ISA flags, core count, backend and device,
versions of jax, jaxlib, oneDNN and jaxconv, ``XLA_FLAGS`` and the thread, layout and direct-loop
settings of ``SPEED_SETTINGS``), so a different machine, library or setting measures anew; ``<geometry>``
names x's and w's shapes, stride, dilation, padding, groups and dtype.
Another process on the same machine reads the choice instead of measuring. A choice whose
``candidates`` differ from the kernels that now serve the call (a kernel registered or removed
since) is measured again. Writes take an exclusive lock on ``tuned.json.lock`` (``fcntl``, where
the platform has it), merge with what is on disk and replace the file atomically (temporary file
+ ``os.replace``), so processes tuning at once keep each other's choices. A file that is not valid
JSON of this format is reported (a ``UserWarning`` naming it) and rebuilt, never trusted. Delete
the file (or call ``clear_cache()``) to measure again.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jaxconv.geometry import ConvGeometry
from jaxconv.kernels import auto, primitives, registry
from jaxconv.kernels.cpu import cpu_model, isa_flags

try:  # POSIX; elsewhere writes are atomic but not serialised between processes
  import fcntl
except ImportError:  # pragma: no cover (Windows)
  fcntl = None  # type: ignore[assignment]

CACHE_DIR_ENV = "JAXCONV_CACHE_DIR"
REPEATS_ENV = "JAXCONV_TUNED_REPEATS"
DEFAULT_REPEATS = 5
CACHE_FILE = "tuned.json"
FORMAT = 1
# A kernel whose second (first warm) run takes this many times the best one is not timed again: it
# cannot win, and a slow kernel on a large call would otherwise cost minutes.
HOPELESS_FACTOR = 20.0
# Settings that change the kernels' speed, recorded (when set) with the machine.
SPEED_SETTINGS = (
  "XLA_FLAGS",
  "OMP_NUM_THREADS",
  "JAXCONV_ONEDNN_THREADS",
  "JAXCONV_ONEDNN_LAYOUT",
  "JAXCONV_ONEDNN_DIRECT",
)
logger = logging.getLogger(__name__)
_lock = threading.RLock()
_memory: dict[tuple[str, str], str] = {}  # (cache file, key) -> kernel, this process
_warned: set[str] = set()
_measured: list[str] = []  # keys this process timed (observable by tests and logs)


# --------------------------------------------------------------------------------------------
# what a choice depends on


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _onednn_version() -> str:
  """oneDNN's version string as the extension reports it, or why it is unavailable."""
  if "onednn" not in registry.available():
    return "not registered"
  from jaxconv.kernels import onednn

  return onednn.info()


def machine() -> dict[str, Any]:
  """What a measured choice depends on: CPU model, ISA flags, cores, backend, library versions, settings.

  The settings are ``XLA_FLAGS`` and, where set, the thread and layout variables of ``SPEED_SETTINGS``.

  Returns:
    A JSON-serialisable dict (the ``machines`` entries of the cache file).
  """
  jaxconv = sys.modules.get("jaxconv")
  device = jax.devices()[0]
  return {
    "cpu": cpu_model(),
    "isa": list(isa_flags()),
    "cores": os.cpu_count() or 0,
    "backend": jax.default_backend(),
    "device": getattr(device, "device_kind", str(device)),
    "jax": jax.__version__,
    "jaxlib": _version("jaxlib"),
    "onednn": _onednn_version(),
    "jaxconv": getattr(jaxconv, "__version__", _version("jaxconv")),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "settings": {name: os.environ[name] for name in SPEED_SETTINGS[1:] if os.environ.get(name)},
  }


def machine_id(info: dict[str, Any]) -> str:
  """A short stable hash of a ``machine()`` dict: the prefix of its choices' keys."""
  return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def geometry_key(g: ConvGeometry) -> str:
  """A readable, complete name of ``g``: shapes, stride, dilation, padding, groups, dtype.

  Example: ``x=128x28x28x1 w=5x5x1x6 stride=1,1 dilation=1,1 padding=2:2,2:2 groups=1 float32``.
  """
  dims = lambda values: "x".join(map(str, values))
  ints = lambda values: ",".join(map(str, values))
  pads = ",".join(f"{lo}:{hi}" for lo, hi in g.padding)
  return (
    f"x={dims(g.x_shape)} w={dims(g.w_shape)} stride={ints(g.stride)} dilation={ints(g.dilation)} "
    f"padding={pads} groups={g.groups} {np.dtype(g.dtype).name}"
  )


def cache_path() -> str:
  """The cache file: ``$JAXCONV_CACHE_DIR/tuned.json``, else in ``$XDG_CACHE_HOME/jaxconv`` or ``~/.cache/jaxconv``."""
  directory = os.environ.get(CACHE_DIR_ENV)
  if not directory:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "jaxconv")
  return os.path.join(directory, CACHE_FILE)


def clear_cache() -> None:
  """Forget every measured choice: delete the cache file and this process's memory of it."""
  with _lock:
    _memory.clear()
    with contextlib.suppress(FileNotFoundError):
      os.remove(cache_path())


def _repeats() -> int:
  value = os.environ.get(REPEATS_ENV, str(DEFAULT_REPEATS))
  try:
    repeats = int(value)
  except ValueError:
    raise ValueError(f"${REPEATS_ENV} must be a positive int; got {value!r}") from None
  if repeats < 1:
    raise ValueError(f"${REPEATS_ENV} must be a positive int; got {value!r}")
  return repeats


# --------------------------------------------------------------------------------------------
# the cache file


def _empty() -> dict[str, Any]:
  return {"format": FORMAT, "machines": {}, "choices": {}}


def _validate(data: object) -> str | None:
  """Why ``data`` is not a cache of this format, or None."""
  if not isinstance(data, dict) or data.get("format") != FORMAT:
    return f"not a format-{FORMAT} jaxconv tuned cache"
  if not isinstance(data.get("machines"), dict) or not isinstance(data.get("choices"), dict):
    return "'machines' and 'choices' must be objects"
  for key, entry in data["choices"].items():
    ok = isinstance(entry, dict) and isinstance(entry.get("impl"), str) and isinstance(entry.get("candidates"), list)
    if not ok or entry["impl"] not in entry["candidates"]:
      return f"choice {key!r} is malformed"
  return None


def _read(path: str) -> dict[str, Any]:
  """The cache at ``path``: empty when absent; empty with a warning naming the file when damaged."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    return _empty()
  try:
    data = json.loads(text)
    reason = _validate(data)
  except ValueError as e:
    reason = f"invalid JSON ({e})"
  if reason is None:
    return data
  if path not in _warned:
    _warned.add(path)
    warnings.warn(
      f"jaxconv: the tuned-kernel cache {path} is damaged ({reason}); it is ignored and rebuilt", stacklevel=2
    )
  return _empty()


def _write(path: str, data: dict[str, Any]) -> None:
  """Replace ``path`` with ``data`` atomically (a temporary file in the same directory, then ``os.replace``)."""
  directory = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(prefix=".tuned-", suffix=".json", dir=directory)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(data, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
  """Exclusive access to ``path`` across processes (``path.lock``, ``fcntl.flock``) and threads."""
  with _lock:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if fcntl is None:  # pragma: no cover
      yield
      return
    with open(path + ".lock", "a") as handle:
      fcntl.flock(handle, fcntl.LOCK_EX)
      try:
        yield
      finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def _lookup(data: dict[str, Any], key: str, candidates: Sequence[str]) -> str | None:
  """The stored choice for ``key`` if it was made among exactly ``candidates``, else None."""
  entry = data["choices"].get(key)
  if entry is None or sorted(entry["candidates"]) != sorted(candidates):
    return None
  return entry["impl"]


# --------------------------------------------------------------------------------------------
# measuring


def candidates(g: ConvGeometry) -> list[str]:
  """The registered kernels that serve ``g``, in registration order, without the dispatchers."""
  names = []
  for name in registry.available():
    kernel = registry.get(name)
    if kernel.dispatch is None and kernel.refusal(g) is None:
      names.append(name)
  return names


def _inputs(g: ConvGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Standard-normal x ``(N, *spatial, C_in)``, w and dy ``(N, *out_spatial, C_out)`` in ``g``'s dtype."""
  rng = np.random.default_rng(0)
  scale = 1.0 / math.sqrt(max(g.taps * g.group_in, 1))
  make = lambda shape, s=1.0: (rng.standard_normal(shape, np.float32) * s).astype(g.dtype)
  return make(g.x_shape), make(g.w_shape, scale), make(g.out_shape)


def _program(name: str, g: ConvGeometry):
  """The jitted forward + input gradient + kernel gradient of the kernel ``name`` on ``g``."""

  def step(x, w, dy):
    return (
      primitives.conv(x, w, g, name),
      primitives.conv_input_grad(dy, w, g, name),
      primitives.conv_kernel_grad(x, dy, g, name),
    )

  return jax.jit(step)


def _seconds(fn, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure(g: ConvGeometry, names: Sequence[str], repeats: int) -> dict[str, float]:
  """Best milliseconds of forward + both gradients of each kernel in ``names`` on ``g``.

  Each kernel's program is compiled and run twice, then timed ``repeats`` times round-robin across
  kernels (so that machine noise hits all alike); a kernel whose second run took ``HOPELESS_FACTOR``
  times the best one is not timed again (its time is that run's). Where the fastest is not the kernel
  that ``"auto"``'s static rule names, the two are timed ``repeats`` times more, alternately: a
  disagreement with the rule gets a second look before it is stored (a whole round of one kernel's
  runs has been measured 2.5x too slow). A kernel that fails to compile or run is left out (logged).
  Runs outside any trace, so it may be called while ``jax.jit`` traces; the arrays are put on the
  device once, so that no run times a transfer.

  Args:
    g: the convolution, x ``(N, *spatial, C_in)`` and w ``(*kernel, C_in // groups, C_out)``.
    names: registered kernels that support ``g``.
    repeats: timed runs per kernel (>= 1).

  Returns:
    ``{name: best ms}`` for the kernels that ran.
  """
  with jax.ensure_compile_time_eval():
    args = tuple(jax.device_put(a) for a in _inputs(g))
    programs, first = {}, {}
    for name in names:
      try:
        programs[name] = _program(name, g)
        _seconds(programs[name], args)  # compiles
        first[name] = _timer(name, programs[name], args)  # the first warm run
      except Exception as e:  # a user's kernel may fail here; the others can still be chosen
        logger.warning("jaxconv tuned: kernel %r failed on %s and is not a candidate: %s", name, geometry_key(g), e)
        programs.pop(name, None)
    best = dict.fromkeys(programs, math.inf)
    fastest_first = min(first.values(), default=math.inf)
    live = [n for n in programs if first[n] <= HOPELESS_FACTOR * fastest_first]
    _rounds(live, repeats, programs, args, best)
    fastest, rule = min(live, key=best.__getitem__, default=None), auto.choose(g)
    if fastest is not None and fastest != rule and rule in live:
      _rounds([fastest, rule], repeats, programs, args, best)
    for name in programs:
      if best[name] == math.inf:
        best[name] = first[name]
  return {name: 1e3 * s for name, s in best.items()}


def _rounds(names: Sequence[str], repeats: int, programs: dict, args: tuple, best: dict[str, float]) -> None:
  """Time each kernel in ``names`` ``repeats`` times, round-robin, keeping each one's best in ``best``."""
  for _ in range(repeats):
    for name in names:
      best[name] = min(best[name], _timer(name, programs[name], args))


def _timer(name: str, fn, args) -> float:
  """Seconds of one timed run of kernel ``name``'s program (a seam for tests: a fake clock picks the winner)."""
  del name
  return _seconds(fn, args)


def _record(g: ConvGeometry, path: str, key: str, mid: str, info: dict[str, Any], names: list[str]) -> str:
  """Measure ``g`` and merge the choice into the cache file under its lock; the chosen kernel."""
  with _file_lock(path):
    data = _read(path)
    stored = _lookup(data, key, names)  # another process may have measured it meanwhile
    if stored is not None:
      return stored
    repeats = _repeats()
    times = measure(g, names, repeats)
    if not times:
      raise RuntimeError(f"impl='tuned': no kernel ran {geometry_key(g)} (candidates {names})")
    choice = min(times, key=times.__getitem__)
    _measured.append(key)
    logger.info("jaxconv tuned: measured %s: %s -> %s", geometry_key(g), times, choice)
    data["machines"][mid] = info
    data["choices"][key] = {
      "impl": choice,
      "ms": {n: round(t, 4) for n, t in times.items()},
      "candidates": sorted(names),
      "repeats": repeats,
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write(path, data)
    return choice


def choose(g: ConvGeometry) -> str:
  """The kernel ``"tuned"`` runs for ``g``: the cached measured choice, measured now if there is none.

  Args:
    g: the convolution, x ``(N, *spatial, C_in)`` and w ``(*kernel, C_in // groups, C_out)``.

  Returns:
    The name of the registered kernel that ran ``g`` fastest on this machine.

  Raises:
    RuntimeError: when no candidate kernel runs ``g``.
  """
  names = candidates(g)
  if len(names) == 1:
    return names[0]
  info = machine()
  mid = machine_id(info)
  key = f"{mid} {geometry_key(g)}"
  path = cache_path()
  with _lock:
    remembered = _memory.get((path, key))
    if remembered in names:
      return remembered
    choice = _lookup(_read(path), key, names) or _record(g, path, key, mid, info, names)
    _memory[(path, key)] = choice
    return choice


def _never_run(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  """The kernel measured fastest on this machine for this call's shapes and dtype (cached on disk)."""
  raise AssertionError("'tuned' is dispatched to the kernel that choose() names before anything runs")


# Local: no, since the fastest kernel may be fft, winograd or toeplitz.
registry.register("tuned", dispatch=choose, local=False)(_never_run)

__all__ = [
  "CACHE_DIR_ENV",
  "REPEATS_ENV",
  "cache_path",
  "candidates",
  "choose",
  "clear_cache",
  "geometry_key",
  "machine",
  "machine_id",
  "measure",
]
