"""Kernel comparison: values, gradients and speed of every registered kernel against lax, under jit.

For each named shape and kernel: check forward values and both gradients against ``"lax"``,
then time the forward pass and forward+backward (``jax.value_and_grad`` of ``0.5 * sum(y**2)``
w.r.t. x and w) with all kernels (and PyTorch CPU, when importable) interleaved in one process:
warm-up excluded, ``block_until_ready``, median of the repeats. Results are rows of plain dicts;
``benchmarks.report`` writes them as JSON and as a markdown table.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import platform
import statistics
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


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
  """Each call timed ``repeats`` times, round-robin so that machine noise hits all alike (ms)."""
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      times[name].append(run_once(call))
  return times


def bench_shape(
  shape: Shape, impls: Sequence[str], *, repeats: int, with_torch: bool, max_call_ms: float
) -> list[dict[str, Any]]:
  """One row per kernel for ``shape``: errors vs lax, median fwd / fwd+bwd ms, GFLOP/s, ratios."""
  spec = shape.spec()
  x, w, ct = random_inputs(shape)
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
  times = time_interleaved(calls, repeats)
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
  return list(rows.values())


def auto_choices(shapes: Sequence[Shape]) -> dict[str, str]:
  """The kernel ``"auto"`` runs for each shape (float32), if ``"auto"`` is registered."""
  if "auto" not in kernels.available():
    return {}
  from jaxconv.kernels import auto

  return {s.name: auto.choose(s.spec()) for s in shapes}


def environment(torch_threads: int = 2) -> dict[str, str]:
  """What the numbers depend on: versions, CPU count, backend and the XLA_FLAGS in force."""
  env = {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": str(jax.devices()),
    "cpu_count": str(os.cpu_count()),
    "machine": platform.processor() or platform.machine(),
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") or "(none: XLA defaults)",
  }
  try:
    env["torch"] = f"{importlib.metadata.version('torch')} ({torch_threads} threads)"
  except importlib.metadata.PackageNotFoundError:
    env["torch"] = "not installed"
  return env


def summarize(rows: Sequence[dict[str, Any]], choices: dict[str, str]) -> dict[str, Any]:
  """Issue 4's targets from the rows: auto vs lax per shape and in geometric mean, and vs torch."""
  by = {(r["shape"], r["impl"]): r for r in rows}
  per_shape: dict[str, dict[str, Any]] = {}
  for name in dict.fromkeys(r["shape"] for r in rows):
    timed = [r for r in rows if r["shape"] == name and "fb_ms" in r and r["impl"] not in ("torch", "auto")]
    entry: dict[str, Any] = {"lax_fb_ms": by.get((name, "lax"), {}).get("fb_ms")}
    if name in choices:
      entry["auto_choice"] = choices[name]
    if "fb_ms" in by.get((name, "auto"), {}):
      entry["auto_fb_ms"] = by[(name, "auto")]["fb_ms"]
      entry["auto_speedup"] = by[(name, "auto")]["fb_speedup"]
    fastest = min(timed, key=lambda r: r["fb_ms"], default=None)
    if fastest is not None:
      entry["fastest"], entry["fastest_speedup"] = fastest["impl"], fastest["fb_speedup"]
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
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Benchmark ``impls`` (plus lax) on ``shapes``; returns rows, the target summary and the environment."""
  rows: list[dict[str, Any]] = []
  for shape in shapes:
    log(f"{shape.name}: {shape.describe()}")
    shape_rows = bench_shape(shape, impls, repeats=repeats, with_torch=with_torch, max_call_ms=max_call_ms)
    for r in shape_rows:
      fields = (
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k not in ("shape", "impl")
      )
      log(f"  {r['impl']:10s} " + "  ".join(fields))
    rows += shape_rows
  return {"env": environment(), "rows": rows, "summary": summarize(rows, auto_choices(shapes))}


__all__ = [
  "auto_choices",
  "bench_shape",
  "check",
  "compiled_peak_bytes",
  "environment",
  "forward_fn",
  "memory_ratio",
  "relative_error",
  "run",
  "run_once",
  "select_impls",
  "summarize",
  "time_interleaved",
  "torch_fns",
  "train_step_fn",
  "vjp_fn",
]
