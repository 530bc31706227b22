"""Kernel comparison: values, gradients and speed of every registered kernel against lax, under jit.

For each named shape and kernel: check forward values and both gradients against ``"lax"``,
then time the forward pass and forward+backward (``jax.value_and_grad`` of ``0.5 * sum(y**2)``
w.r.t. x and w) with all kernels (and PyTorch CPU, when importable) interleaved in one process:
warm-up excluded, ``block_until_ready``, median of the repeats (a repeat of a fast call is the mean of
back-to-back calls filling ``min_sample_ms``). Results are rows of plain dicts;
``benchmarks.report`` writes them as JSON and as a markdown table.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.shapes import TARGET_SHAPES, Shape, random_inputs
from jaxconv import kernels, ops


def select_impls(names: Sequence[str] | None) -> list[str]:
  """The named kernels (all registered ones when empty), always with ``"lax"`` first."""
  available = kernels.available()
  names = list(names) if names else list(available)
  unknown = [n for n in names if n not in available]
  if unknown:
    raise ValueError(f"impl: unknown {unknown}; registered: {list(available)}")
  return ["lax"] + [n for n in dict.fromkeys(names) if n != "lax"]


# --------------------------------------------------------------------------------------------
# the functions under test


def forward_fn(shape: Shape, impl: str) -> jax.stages.Wrapped:
  """``jit``-ed ``(x, w) -> conv(x, w)`` with ``impl``."""
  return jax.jit(lambda x, w: ops.conv(x, w, impl=impl, **shape.geometry()))


def vjp_fn(shape: Shape, impl: str) -> jax.stages.Wrapped:
  """``jit``-ed ``(x, w, ct) -> (dx, dw)``: the pullback of ``ct`` through ``conv``."""

  def pullback(x, w, ct):
    _, vjp = jax.vjp(lambda x, w: ops.conv(x, w, impl=impl, **shape.geometry()), x, w)
    return vjp(ct)

  return jax.jit(pullback)


def train_step_fn(shape: Shape, impl: str) -> jax.stages.Wrapped:
  """``jit``-ed forward+backward: value and grads (x, w) of ``0.5 * sum(conv(x, w)**2)``."""

  def loss(x, w):
    y = ops.conv(x, w, impl=impl, **shape.geometry()).astype(jnp.float32)
    return 0.5 * jnp.sum(y * y)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def relative_error(actual: jax.Array, expected: jax.Array) -> float:
  """``max |actual - expected| / max(max |expected|, tiny)``, in float64."""
  a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), np.finfo(np.float32).tiny))


def check(shape: Shape, impl: str, x: jax.Array, w: jax.Array, ct: jax.Array, reference: dict) -> dict[str, float]:
  """Relative errors of y, dx and dw of ``impl`` against the lax ``reference`` (same keys)."""
  y = forward_fn(shape, impl)(x, w)
  dx, dw = vjp_fn(shape, impl)(x, w, ct)
  got = {"y": y, "dx": dx, "dw": dw}
  return {f"err_{k}": relative_error(got[k], reference[k]) for k in got}


def compiled_peak_bytes(fn: jax.stages.Wrapped, *args: Any) -> int:
  """Arguments + outputs + temporaries of ``jit``-ed ``fn`` on ``args`` (the compiled memory analysis).

  (The analysis's own ``peak_memory_in_bytes`` leaves the temporaries out on CPU.)
  """
  stats = fn.lower(*args).compile().memory_analysis()
  if stats is None:
    raise RuntimeError(f"the {jax.default_backend()} backend gives no compiled memory analysis")
  used = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
  return int(used - stats.alias_size_in_bytes)


def memory_ratio(shape: Shape, impl: str) -> dict[str, float]:
  """Compiled peak bytes of ``impl`` and lax on ``shape``, forward and forward+backward, and their ratios."""
  x, w, _ = random_inputs(shape)
  out = {}
  for mode, make in (("fwd", forward_fn), ("fb", train_step_fn)):
    mine, ref = compiled_peak_bytes(make(shape, impl), x, w), compiled_peak_bytes(make(shape, "lax"), x, w)
    out.update({f"{mode}_peak_mb": mine / 2**20, f"{mode}_lax_peak_mb": ref / 2**20, f"{mode}_ratio": mine / ref})
  return out


# --------------------------------------------------------------------------------------------
# PyTorch (optional)


def torch_fns(
  shape: Shape, x: jax.Array, w: jax.Array, threads: int = 2
) -> tuple[Callable[[], object], Callable[[], object]] | None:
  """PyTorch CPU forward and forward+backward closures for ``shape`` (channels-first), or None."""
  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    return None
  torch.set_num_threads(threads)
  spec = shape.spec()
  rank = len(spec.kernel)
  conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
  xt = torch.from_numpy(np.moveaxis(np.asarray(x, np.float32), -1, 1).copy()).requires_grad_(True)
  w_oi = np.transpose(np.asarray(w, np.float32), (rank + 1, rank, *range(rank)))  # (*kernel, I, O) -> (O, I, *kernel)
  wt = torch.from_numpy(np.ascontiguousarray(w_oi)).requires_grad_(True)
  symmetric = all(lo == hi for lo, hi in spec.padding)
  flat_pad = [v for lo_hi in reversed(spec.padding) for v in lo_hi]  # F.pad wants the last axis first

  def forward():
    inp = xt if symmetric else F.pad(xt, flat_pad)
    pad = [lo for lo, _ in spec.padding] if symmetric else 0
    return conv(inp, wt, stride=spec.stride, padding=pad, dilation=spec.dilation, groups=spec.groups)

  def forward_backward():
    xt.grad = wt.grad = None
    y = forward()
    loss = 0.5 * (y * y).sum()
    loss.backward()
    return loss

  def forward_only():
    with torch.no_grad():
      return forward()

  return forward_only, forward_backward


# --------------------------------------------------------------------------------------------
# timing


def run_once(fn: Callable[[], object]) -> float:
  """Wall time of one call in ms, waiting for JAX's asynchronous results."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return (time.perf_counter() - start) * 1e3


def calls_per_sample(call: Callable[[], object], min_sample_ms: float) -> int:
  """How many back-to-back calls of ``call`` fill one sample of at least ``min_sample_ms`` (at least 1)."""
  if min_sample_ms <= 0:
    return 1
  once = min(run_once(call) for _ in range(3))
  return max(1, math.ceil(min_sample_ms / max(once, 1e-3)))


def run_sample(call: Callable[[], object], number: int) -> float:
  """Mean wall time in ms of ``number`` back-to-back calls, each waited for."""
  start = time.perf_counter()
  for _ in range(number):
    jax.block_until_ready(call())
  return (time.perf_counter() - start) * 1e3 / number


def time_interleaved(
  calls: dict[str, Callable[[], object]], repeats: int, min_sample_ms: float = 0.0
) -> dict[str, list[float]]:
  """Each call timed ``repeats`` times, round-robin so that machine noise hits all alike (ms per call).

  With ``min_sample_ms``, a sample of a fast call is the mean of as many back-to-back calls as fill
  that time: a single call of a millisecond varies with the scheduler and with whether idle threads
  must first wake, which a training loop, calling again at once, does not see.
  """
  numbers = {name: calls_per_sample(call, min_sample_ms) for name, call in calls.items()}
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      times[name].append(run_sample(call, numbers[name]))
  return times


def bench_shape(
  shape: Shape,
  impls: Sequence[str],
  *,
  repeats: int,
  with_torch: bool,
  max_call_ms: float,
  peak_gflops: float | None = None,
  min_sample_ms: float = 0.0,
  dtype: Any = jnp.float32,
) -> list[dict[str, Any]]:
  """One row per kernel for ``shape``: errors vs lax, median fwd / fwd+bwd ms, GFLOP/s, ratios.

  With ``peak_gflops`` (``gemm_peak_gflops()``), each timed row also gets ``fb_peak_fraction``:
  its forward+backward GFLOP/s over the machine's GEMM rate. ``min_sample_ms`` is
  ``time_interleaved``'s. Every kernel, lax's reference included, runs on ``dtype`` operands.
  """
  spec = shape.spec(dtype)
  x, w, ct = random_inputs(shape, dtype)
  reference = {"y": forward_fn(shape, "lax")(x, w)}
  reference["dx"], reference["dw"] = vjp_fn(shape, "lax")(x, w, ct)
  rows: dict[str, dict[str, Any]] = {}
  calls: dict[str, Callable[[], object]] = {}
  for impl in impls:
    row = rows[impl] = {"shape": shape.name, "impl": impl}
    reason = kernels.get(impl).refusal(spec)
    if reason is not None:
      row["skipped"] = f"refused: {reason}"
      continue
    row.update(check(shape, impl, x, w, ct, reference))
    fwd, step = forward_fn(shape, impl), train_step_fn(shape, impl)
    calls_of_impl: dict[str, Callable[[], object]] = {
      f"{impl}/fwd": functools.partial(fwd, x, w),
      f"{impl}/fb": functools.partial(step, x, w),
    }
    for call in calls_of_impl.values():
      run_once(call)  # compiles
    elapsed = run_once(calls_of_impl[f"{impl}/fb"])
    if elapsed > max_call_ms and impl != "lax":  # the reference is always timed
      row["skipped"] = f"too slow: {elapsed:.0f} ms per forward+backward (limit {max_call_ms:.0f})"
      continue
    calls.update(calls_of_impl)
  torch_calls = torch_fns(shape, x, w) if with_torch else None
  if torch_calls is not None:
    rows["torch"] = {"shape": shape.name, "impl": "torch"}
    for torch_call in torch_calls:
      torch_call()
    calls["torch/fwd"], calls["torch/fb"] = torch_calls
  times = time_interleaved(calls, repeats, min_sample_ms)
  for key, samples in times.items():
    impl, mode = key.split("/")
    rows[impl][f"{mode}_ms"] = statistics.median(samples)
    rows[impl][f"{mode}_min_ms"] = min(samples)
  for row in rows.values():
    if "fwd_ms" in row:
      row["fwd_gflops"] = spec.flops / row["fwd_ms"] / 1e6
      row["fb_gflops"] = 3 * spec.flops / row["fb_ms"] / 1e6
      row["fwd_speedup"] = rows["lax"]["fwd_ms"] / row["fwd_ms"]
      row["fb_speedup"] = rows["lax"]["fb_ms"] / row["fb_ms"]
      if peak_gflops:
        row["fb_peak_fraction"] = row["fb_gflops"] / peak_gflops
  return list(rows.values())


def auto_choices(shapes: Sequence[Shape], dtype: Any = jnp.float32) -> dict[str, str]:
  """The kernel ``"auto"`` runs for each shape in ``dtype``, if ``"auto"`` is registered."""
  if "auto" not in kernels.available():
    return {}
  from jaxconv.kernels import auto

  return {s.name: auto.choose(s.spec(dtype)) for s in shapes}


def tuned_choices(shapes: Sequence[Shape], dtype: Any = jnp.float32) -> dict[str, str]:
  """The kernel ``"tuned"`` runs for each shape in ``dtype`` (measured now where the cache has none)."""
  if "tuned" not in kernels.available():
    return {}
  from jaxconv.kernels import tuned

  return {s.name: tuned.choose(s.spec(dtype)) for s in shapes}


def _commit() -> str:
  """The repository's HEAD commit (``+dirty`` with uncommitted changes), or why it is unknown."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True)
  except (OSError, subprocess.CalledProcessError):
    return "unknown (not a git checkout)"
  return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(torch_threads: int = 2) -> dict[str, str]:
  """What the numbers depend on: date, commit, command, CPU, ISA, cores, load, versions, XLA_FLAGS.

  Args:
    torch_threads: the threads PyTorch is timed with (reported beside its version).

  Returns:
    ``{field: text}``, in the order the reports print them.
  """
  from jaxconv.kernels import tuned  # its machine record is what a measured choice depends on: the same facts

  machine = tuned.machine()
  load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
  env = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "commit": _commit(),
    "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
    "cpu": machine["cpu"],
    "isa": " ".join(machine["isa"]) or "unknown",
    "cpu_count": str(machine["cores"]),
    "load_average": load,
    "backend": jax.default_backend(),
    "devices": str(jax.devices()),
    "jax": jax.__version__,
    "jaxlib": machine["jaxlib"],
    "jaxconv": machine["jaxconv"],
    "onednn": machine["onednn"],
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") or "(none: XLA defaults)",
  }
  try:
    torch_version = importlib.metadata.version("torch")
  except importlib.metadata.PackageNotFoundError:
    torch_version = "not installed"
  env["torch"] = torch_version if torch_version == "not installed" else f"{torch_version} ({torch_threads} threads)"
  return env


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  """The machine's practical float32 GEMM rate: best GFLOP/s of a jitted ``(n, n) @ (n, n)`` matmul.

  Args:
    n: the matrices' side.
    repeats: timed calls after one warm-up (the fastest counts).

  Returns:
    ``2 n^3 / best seconds / 1e9``.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.dot)
  run_once(lambda: matmul(a, b))
  best_ms = min(run_once(lambda: matmul(a, b)) for _ in range(max(repeats, 1)))
  return 2 * n**3 / best_ms / 1e6


def summarize(
  rows: Sequence[dict[str, Any]], choices: dict[str, str], tuned: dict[str, str] | None = None
) -> dict[str, Any]:
  """Issue 4's targets from the rows: auto vs lax per shape and in geometric mean, and vs torch.

  ``choices`` and ``tuned`` name the kernel auto and tuned ran per shape; tuned's forward+backward is
  compared with the fastest kernel's (``tuned_vs_fastest``: its ms over the fastest's, >= 1 up to noise).
  """
  by = {(r["shape"], r["impl"]): r for r in rows}
  per_shape: dict[str, dict[str, Any]] = {}
  for name in dict.fromkeys(r["shape"] for r in rows):
    timed = [r for r in rows if r["shape"] == name and "fb_ms" in r and r["impl"] not in ("torch", "auto", "tuned")]
    entry: dict[str, Any] = {"lax_fb_ms": by.get((name, "lax"), {}).get("fb_ms")}
    if name in choices:
      entry["auto_choice"] = choices[name]
    if tuned and name in tuned:
      entry["tuned_choice"] = tuned[name]
    if "fb_ms" in by.get((name, "auto"), {}):
      entry["auto_fb_ms"] = by[(name, "auto")]["fb_ms"]
      entry["auto_speedup"] = by[(name, "auto")]["fb_speedup"]
    fastest = min(timed, key=lambda r: r["fb_ms"], default=None)
    if fastest is not None:
      entry["fastest"], entry["fastest_speedup"] = fastest["impl"], fastest["fb_speedup"]
      if "fb_ms" in by.get((name, "tuned"), {}):
        entry["tuned_fb_ms"] = by[(name, "tuned")]["fb_ms"]
        entry["tuned_vs_fastest"] = entry["tuned_fb_ms"] / fastest["fb_ms"]
    if "fb_ms" in by.get((name, "torch"), {}):
      torch_row = by[(name, "torch")]
      entry["torch_fb_ms"] = torch_row["fb_ms"]
      if "auto_fb_ms" in entry:
        entry["auto_vs_torch"] = entry["auto_fb_ms"] / torch_row["fb_ms"]
        # PyTorch's OpenMP barriers suffer most when other processes load the machine: the
        # fastest repeats of both are the fairer comparison on a shared machine.
        entry["auto_vs_torch_min"] = by[(name, "auto")]["fb_min_ms"] / torch_row["fb_min_ms"]
    per_shape[name] = entry
  summary: dict[str, Any] = {"per_shape": per_shape}
  tuned_ratios = {n: e["tuned_vs_fastest"] for n, e in per_shape.items() if "tuned_vs_fastest" in e}
  if tuned_ratios:
    summary["tuned_worst_vs_fastest"] = max(tuned_ratios.values())
    summary["shapes_where_tuned_is_over_1.15x_the_fastest"] = [n for n, r in tuned_ratios.items() if r > 1.15]
  speedups: list[float] = [
    per_shape[n]["auto_speedup"] for n in TARGET_SHAPES if "auto_speedup" in per_shape.get(n, {})
  ]
  if speedups:
    summary["target_geomean_auto_speedup"] = math.exp(statistics.fmean(map(math.log, speedups)))
    summary["target_shapes_counted"] = len(speedups)
    # Where auto chose lax it runs the same program; a ratio below 1 there is timing noise.
    summary["shapes_where_auto_is_slower_than_lax"] = [
      n for n, e in per_shape.items() if e.get("auto_speedup", 1.0) < 1.0 and e.get("auto_choice") != "lax"
    ]
  return summary


def run(
  shapes: Sequence[Shape],
  impls: Sequence[str],
  *,
  repeats: int = 10,
  with_torch: bool = True,
  max_call_ms: float = 3000.0,
  min_sample_ms: float = 0.0,
  dtype: Any = jnp.float32,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Benchmark ``impls`` (plus lax) on ``shapes`` in ``dtype``; returns rows, the target summary and the environment.

  The machine's float32 GEMM rate (``gemm_peak_gflops``) is measured first, in the same process, and
  recorded under ``env["gemm_peak_gflops"]``; each timed row gets its fraction of it.
  """
  rows: list[dict[str, Any]] = []
  env = environment()
  env["dtype"] = jnp.dtype(dtype).name
  peak = gemm_peak_gflops(repeats=max(repeats, 3))
  env["gemm_peak_gflops"] = f"{peak:.0f} (jitted float32 2048^3 matmul, best of {max(repeats, 3)})"
  env["timing"] = (
    f"median of {repeats} samples per kernel and mode, kernels round-robin; a sample is the mean of as many "
    f"back-to-back calls as fill {min_sample_ms:g} ms (one call if slower)"
  )
  log(f"float32 GEMM peak: {peak:.0f} GFLOP/s")
  for shape in shapes:
    log(f"{shape.name}: {shape.describe()}")
    shape_rows = bench_shape(
      shape,
      impls,
      repeats=repeats,
      with_torch=with_torch,
      max_call_ms=max_call_ms,
      peak_gflops=peak,
      min_sample_ms=min_sample_ms,
      dtype=dtype,
    )
    for r in shape_rows:
      fields = (
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k not in ("shape", "impl")
      )
      log(f"  {r['impl']:10s} " + "  ".join(fields))
    rows += shape_rows
  env["load_average_after"] = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "-"
  tuned = tuned_choices(shapes, dtype) if "tuned" in impls else None
  return {"env": env, "rows": rows, "summary": summarize(rows, auto_choices(shapes, dtype), tuned)}


__all__ = [
  "auto_choices",
  "bench_shape",
  "calls_per_sample",
  "check",
  "compiled_peak_bytes",
  "environment",
  "forward_fn",
  "gemm_peak_gflops",
  "memory_ratio",
  "relative_error",
  "run",
  "run_once",
  "run_sample",
  "select_impls",
  "summarize",
  "time_interleaved",
  "torch_fns",
  "train_step_fn",
  "tuned_choices",
  "vjp_fn",
]
