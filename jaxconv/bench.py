"""Kernel comparison: values, gradients and speed of every registered kernel against lax, under jit.

For each named shape and kernel: check forward values and both gradients against ``"lax"``,
then time the forward pass and forward+backward (``jax.value_and_grad`` of ``0.5 * sum(y**2)``
w.r.t. x and w) with all kernels (and PyTorch CPU, when importable) interleaved in one process:
warm-up excluded, ``block_until_ready``, median of the repeats. Results are rows of plain dicts,
written as JSON and as a markdown table.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import kernels, ops
from jaxconv.geometry import ConvGeometry, conv_geometry
from jaxconv.geometry import Padding


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmark case: x ``(N, *spatial, C_in)``, w ``(*kernel, C_in // groups, C_out)`` and geometry."""

  name: str
  x: tuple[int, ...]
  w: tuple[int, ...]
  stride: int | tuple[int, ...] = 1
  padding: Padding = "valid"
  dilation: int | tuple[int, ...] = 1
  groups: int = 1

  def spec(self, dtype=jnp.float32) -> ConvGeometry:
    """The validated kernel-call description of this case."""
    return conv_geometry(self.x, self.w, dtype, stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

  def geometry(self) -> dict:
    """The keyword arguments of ``jc.conv`` for this case."""
    return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

  def describe(self) -> str:
    """A short human-readable form, e.g. ``32x56x56x64 -> 64, 3x3 same``."""
    spec = self.spec()
    parts = ["x".join(map(str, self.x)), "->", f"{spec.out_channels},", "x".join(map(str, spec.kernel))]
    if isinstance(self.padding, str):
      parts.append(self.padding)
    elif any(p != (0, 0) for p in spec.padding):
      parts.append(f"pad {self.padding}")
    for label, value in (("stride", self.stride), ("dilation", self.dilation), ("groups", self.groups)):
      if value != 1:
        parts.append(f"{label} {value}")
    return " ".join(parts)


SHAPES: tuple[Shape, ...] = (
    # LeNet-5 (batch 128) and the five cases of issue 4.
    Shape("lenet_conv1", (128, 28, 28, 1), (5, 5, 1, 6), padding=2),
    Shape("lenet_conv2", (128, 14, 14, 6), (5, 5, 6, 16)),
    Shape("resnet_3x3", (32, 56, 56, 64), (3, 3, 64, 64), padding="same"),
    Shape("resnet_3x3_s2", (32, 56, 56, 64), (3, 3, 64, 128), stride=2, padding="same"),
    Shape("bottleneck_1x1", (32, 28, 28, 256), (1, 1, 256, 64)),
    Shape("depthwise_3x3", (32, 56, 56, 64), (3, 3, 1, 64), padding="same", groups=64),
    Shape("large_15x15", (8, 64, 64, 8), (15, 15, 8, 8), padding="same"),
    # A few more: other ranks, groups, dilation, a strided stem.
    Shape("conv1d_k5", (32, 1024, 64), (5, 64, 64), padding="same"),
    Shape("conv3d_3x3x3", (4, 16, 32, 32, 32), (3, 3, 3, 32, 32), padding="same"),
    Shape("grouped_3x3_g4", (32, 28, 28, 128), (3, 3, 32, 128), padding="same", groups=4),
    Shape("dilated_3x3_d2", (16, 32, 32, 64), (3, 3, 64, 64), padding="same", dilation=2),
    Shape("stem_7x7_s2", (16, 112, 112, 3), (7, 7, 3, 64), stride=2, padding="same"),
    # Where the banded (toeplitz) kernel stops paying: a small image with 32 output channels.
    Shape("cifar_5x5", (128, 32, 32, 3), (5, 5, 3, 32), padding="same"),
)
SHAPES_BY_NAME = {s.name: s for s in SHAPES}
# The shapes that issue 4's targets are stated on.
TARGET_SHAPES = ("lenet_conv1", "lenet_conv2", "resnet_3x3", "resnet_3x3_s2", "bottleneck_1x1", "depthwise_3x3", "large_15x15")


def select_shapes(names: Sequence[str] | None) -> list[Shape]:
  """The named shapes (all when ``names`` is empty); ``ValueError`` naming an unknown one."""
  if not names:
    return list(SHAPES)
  unknown = [n for n in names if n not in SHAPES_BY_NAME]
  if unknown:
    raise ValueError(f"shapes: unknown {unknown}; known: {list(SHAPES_BY_NAME)}")
  return [SHAPES_BY_NAME[n] for n in names]


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


def random_inputs(shape: Shape, dtype=jnp.float32, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Standard-normal x, He-scaled w and a standard-normal output cotangent for ``shape``."""
  kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
  spec = shape.spec(dtype)
  fan_in = math.prod(spec.kernel) * spec.in_channels // spec.groups
  x = jax.random.normal(kx, shape.x, dtype)
  w = (jax.random.normal(kw, shape.w, jnp.float32) * math.sqrt(2.0 / fan_in)).astype(dtype)
  ct = jax.random.normal(kc, spec.out_shape, dtype)
  return x, w, ct


def forward_fn(shape: Shape, impl: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``jit``-ed ``(x, w) -> conv(x, w)`` with ``impl``."""
  return jax.jit(lambda x, w: ops.conv(x, w, impl=impl, **shape.geometry()))


def vjp_fn(shape: Shape, impl: str) -> Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """``jit``-ed ``(x, w, ct) -> (dx, dw)``: the pullback of ``ct`` through ``conv``."""

  def pullback(x, w, ct):
    _, vjp = jax.vjp(lambda x, w: ops.conv(x, w, impl=impl, **shape.geometry()), x, w)
    return vjp(ct)

  return jax.jit(pullback)


def train_step_fn(shape: Shape, impl: str) -> Callable[[jax.Array, jax.Array], tuple]:
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


def compiled_peak_bytes(fn: Callable, *args) -> int:
  """Arguments + outputs + temporaries of ``jit``-ed ``fn`` on ``args`` (the compiled memory analysis).

  (The analysis's own ``peak_memory_in_bytes`` leaves the temporaries out on CPU.)
  """
  stats = fn.lower(*args).compile().memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


# --------------------------------------------------------------------------------------------
# PyTorch (optional)


def torch_fns(shape: Shape, x: jax.Array, w: jax.Array, threads: int = 2) -> tuple[Callable[[], object], Callable[[], object]] | None:
  """PyTorch CPU forward and forward+backward closures for ``shape`` (channels-first), or None."""
  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    return None
  torch.set_num_threads(threads)
  spec = shape.spec()
  rank = spec.rank
  conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
  xt = torch.from_numpy(np.moveaxis(np.asarray(x, np.float32), -1, 1).copy()).requires_grad_(True)
  wt = torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(w, np.float32), (rank + 1, rank, *range(rank))))).requires_grad_(True)
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


def bench_shape(shape: Shape, impls: Sequence[str], *, repeats: int, with_torch: bool, max_call_ms: float) -> list[dict]:
  """One row per kernel for ``shape``: errors vs lax, median fwd / fwd+bwd ms, GFLOP/s, ratios."""
  spec = shape.spec()
  x, w, ct = random_inputs(shape)
  reference = {"y": forward_fn(shape, "lax")(x, w)}
  reference["dx"], reference["dw"] = vjp_fn(shape, "lax")(x, w, ct)
  rows: dict[str, dict] = {}
  calls: dict[str, Callable[[], object]] = {}
  for impl in impls:
    row = rows[impl] = {"shape": shape.name, "impl": impl}
    reason = kernels.get(impl).refusal(spec)
    if reason is not None:
      row["skipped"] = f"refused: {reason}"
      continue
    row.update(check(shape, impl, x, w, ct, reference))
    fwd, step = forward_fn(shape, impl), train_step_fn(shape, impl)
    calls_of_impl = {f"{impl}/fwd": functools.partial(fwd, x, w), f"{impl}/fb": functools.partial(step, x, w)}
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
    for call in torch_calls:
      call()
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


def memory_ratio(shape: Shape, impl: str) -> dict[str, float]:
  """Compiled peak bytes of ``impl`` and lax on ``shape``, forward and forward+backward, and their ratios."""
  x, w, _ = random_inputs(shape)
  out = {}
  for mode, make in (("fwd", forward_fn), ("fb", train_step_fn)):
    mine, ref = compiled_peak_bytes(make(shape, impl), x, w), compiled_peak_bytes(make(shape, "lax"), x, w)
    out.update({f"{mode}_peak_mb": mine / 2**20, f"{mode}_lax_peak_mb": ref / 2**20, f"{mode}_ratio": mine / ref})
  return out


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


def summarize(rows: Sequence[dict], choices: dict[str, str]) -> dict:
  """Issue 4's targets from the rows: auto vs lax per shape and in geometric mean, and vs torch."""
  by = {(r["shape"], r["impl"]): r for r in rows}
  per_shape = {}
  for name in dict.fromkeys(r["shape"] for r in rows):
    timed = [r for r in rows if r["shape"] == name and "fb_ms" in r and r["impl"] not in ("torch", "auto")]
    entry = {"lax_fb_ms": by.get((name, "lax"), {}).get("fb_ms")}
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
  summary: dict = {"per_shape": per_shape}
  speedups = [per_shape[n]["auto_speedup"] for n in TARGET_SHAPES if "auto_speedup" in per_shape.get(n, {})]
  if speedups:
    summary["target_geomean_auto_speedup"] = math.exp(statistics.fmean(map(math.log, speedups)))
    summary["target_shapes_counted"] = len(speedups)
    # Where auto chose lax it runs the same program; a ratio below 1 there is timing noise.
    summary["shapes_where_auto_is_slower_than_lax"] = [n for n, e in per_shape.items() if e.get("auto_speedup", 1.0) < 1.0 and e.get("auto_choice") != "lax"]
  return summary


# --------------------------------------------------------------------------------------------
# reports


def fmt(value: float | None, digits: int = 2) -> str:
  """A number for the table, or a dash."""
  return "-" if value is None else f"{value:.{digits}f}"


def summary_table(summary: dict) -> list[str]:
  """Markdown lines: per shape, lax vs auto (and its kernel) vs the fastest kernel vs torch, forward+backward."""
  lines = [
      "| shape | lax ms | auto kernel | auto ms | lax / auto | fastest (lax / it) | torch ms | auto / torch | same, fastest repeats |",
      "|---|---:|---|---:|---:|---|---:|---:|---:|",
  ]
  for name, e in summary["per_shape"].items():
    fastest = f"{e['fastest']} ({e['fastest_speedup']:.2f})" if "fastest" in e else "-"
    lines.append(
        f"| {name} | {fmt(e.get('lax_fb_ms'))} | {e.get('auto_choice', '-')} | {fmt(e.get('auto_fb_ms'))} | {fmt(e.get('auto_speedup'))} "
        f"| {fastest} | {fmt(e.get('torch_fb_ms'))} | {fmt(e.get('auto_vs_torch'))} | {fmt(e.get('auto_vs_torch_min'))} |"
    )
  return lines


def targets(summary: dict) -> list[str]:
  """Markdown bullets for issue 4's targets."""
  if "target_geomean_auto_speedup" not in summary:
    return []
  slower = summary["shapes_where_auto_is_slower_than_lax"]
  per_shape = summary["per_shape"]
  lenet = ", ".join(f"{n} {per_shape[n]['auto_speedup']:.2f}x" for n in ("lenet_conv1", "lenet_conv2") if "auto_speedup" in per_shape.get(n, {}))
  near_torch = [n for n, e in per_shape.items() if e.get("auto_vs_torch_min", math.inf) <= 1.25]
  lines = [
      f"- geometric mean of lax / auto over the {summary['target_shapes_counted']} target shapes: **{summary['target_geomean_auto_speedup']:.2f}x** (target >= 1.5)",
      f"- auto at least as fast as lax on every shape (where it runs lax itself, by construction): **{'yes' if not slower else 'no: ' + ', '.join(slower)}**",
      f"- LeNet, auto vs lax: {lenet or '-'}",
  ]
  if any("auto_vs_torch" in e for e in per_shape.values()):
    lines.append(f"- auto within 1.25x of torch (fastest repeats): {', '.join(near_torch) or 'none'} ({len(near_torch)} of {sum('auto_vs_torch' in e for e in per_shape.values())})")
  return lines


def markdown(rows: Sequence[dict], summary: dict, env: dict[str, str], memory: dict | None = None) -> str:
  """The results as markdown: environment, the auto summary, targets, memory, every (shape, impl) row."""
  lines = ["# Kernel comparison: forward and forward+backward, median ms", ""]
  lines += [f"- {k}: `{v}`" for k, v in env.items()]
  lines += ["", "## Shapes", ""] + shape_list(list(summary["per_shape"]))
  lines += ["", "## Forward+backward: lax, auto, the fastest kernel, torch", ""] + summary_table(summary)
  lines += ["", "## Targets", ""] + targets(summary)
  if memory:
    lines += ["", "## Peak memory (compiled memory analysis: arguments + outputs + temporaries)", ""]
    for key, value in memory.items():
      lines.append(f"- {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in value.items()))
  lines += ["", "## Every kernel", ""]
  lines += ["| shape | impl | fwd ms | fwd GFLOP/s | fwd lax / it | fwd+bwd ms | fwd+bwd GFLOP/s | fwd+bwd lax / it | max rel err (y, dx, dw) |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    if "skipped" in r:
      lines.append(f"| {r['shape']} | {r['impl']} | - | - | - | - | - | - | {r['skipped']} |")
      continue
    errs = {"lax": "(reference)", "torch": "-"}.get(r["impl"]) or ", ".join(f"{r[k]:.0e}" for k in ("err_y", "err_dx", "err_dw"))
    lines.append(
        f"| {r['shape']} | {r['impl']} | {fmt(r.get('fwd_ms'))} | {fmt(r.get('fwd_gflops'), 0)} | {fmt(r.get('fwd_speedup'))} "
        f"| {fmt(r.get('fb_ms'))} | {fmt(r.get('fb_gflops'), 0)} | {fmt(r.get('fb_speedup'))} | {errs} |"
    )
  return "\n".join(lines) + "\n"


def shape_list(names: Sequence[str]) -> list[str]:
  """Markdown bullets describing the named (registered) benchmark shapes."""
  return [f"- `{n}`: {SHAPES_BY_NAME[n].describe()}" for n in names if n in SHAPES_BY_NAME]


def write(results: dict, directory: str, stem: str = "kernels") -> tuple[str, str]:
  """Write ``results`` (rows, summary, env, memory) as ``stem.json`` and ``stem.md`` under ``directory``."""
  os.makedirs(directory, exist_ok=True)
  json_path, md_path = os.path.join(directory, f"{stem}.json"), os.path.join(directory, f"{stem}.md")
  with open(json_path, "w") as f:
    json.dump(results, f, indent=1)
  with open(md_path, "w") as f:
    f.write(markdown(results["rows"], results["summary"], results["env"], results.get("memory")))
  return json_path, md_path


def run(shapes: Sequence[Shape], impls: Sequence[str], *, repeats: int = 10, with_torch: bool = True, max_call_ms: float = 3000.0, log: Callable[[str], None] = print) -> dict:
  """Benchmark ``impls`` (plus lax) on ``shapes``; returns rows, the target summary and the environment."""
  rows: list[dict] = []
  for shape in shapes:
    log(f"{shape.name}: {shape.describe()}")
    shape_rows = bench_shape(shape, impls, repeats=repeats, with_torch=with_torch, max_call_ms=max_call_ms)
    for r in shape_rows:
      log(f"  {r['impl']:10s} " + ("  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k not in ("shape", "impl"))))
    rows += shape_rows
  results = {"env": environment(), "rows": rows, "summary": summarize(rows, auto_choices(shapes))}
  return results
