"""The comparison's results as markdown and JSON: the auto and tuned summary, the targets, every row."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from benchmarks.shapes import SHAPES_BY_NAME


def _fmt(value: float | None, digits: int = 2) -> str:
  """A number for the table, or a dash."""
  return "-" if value is None else f"{value:.{digits}f}"


def summary_table(summary: dict[str, Any]) -> list[str]:
  """Markdown lines: per shape, forward+backward ms of lax, auto and tuned (with their kernels), the fastest, torch."""
  lines = [
    "| shape | lax ms | auto kernel | auto ms | lax / auto | tuned kernel | tuned ms | tuned / fastest "
    "| fastest (lax / it) | torch ms | auto / torch | same, fastest repeats |",
    "|---|---:|---|---:|---:|---|---:|---:|---|---:|---:|---:|",
  ]
  for name, e in summary["per_shape"].items():
    fastest = f"{e['fastest']} ({e['fastest_speedup']:.2f})" if "fastest" in e else "-"
    lines.append(
      f"| {name} | {_fmt(e.get('lax_fb_ms'))} | {e.get('auto_choice', '-')} | {_fmt(e.get('auto_fb_ms'))} "
      f"| {_fmt(e.get('auto_speedup'))} | {e.get('tuned_choice', '-')} | {_fmt(e.get('tuned_fb_ms'))} "
      f"| {_fmt(e.get('tuned_vs_fastest'))} | {fastest} | {_fmt(e.get('torch_fb_ms'))} "
      f"| {_fmt(e.get('auto_vs_torch'))} | {_fmt(e.get('auto_vs_torch_min'))} |"
    )
  return lines


def targets(summary: dict[str, Any]) -> list[str]:
  """Markdown bullets for issue 4's targets."""
  if "target_geomean_auto_speedup" not in summary:
    return []
  slower = summary["shapes_where_auto_is_slower_than_lax"]
  per_shape = summary["per_shape"]
  lenet = ", ".join(
    f"{n} {per_shape[n]['auto_speedup']:.2f}x"
    for n in ("lenet_conv1", "lenet_conv2")
    if "auto_speedup" in per_shape.get(n, {})
  )
  near_torch = [n for n, e in per_shape.items() if e.get("auto_vs_torch_min", math.inf) <= 1.25]
  geomean, counted = summary["target_geomean_auto_speedup"], summary["target_shapes_counted"]
  lines = [
    f"- geometric mean of lax / auto over the {counted} target shapes: **{geomean:.2f}x** (target >= 1.5)",
    "- auto at least as fast as lax on every shape (where it runs lax itself, by construction): "
    f"**{'yes' if not slower else 'no: ' + ', '.join(slower)}**",
    f"- LeNet, auto vs lax: {lenet or '-'}",
  ]
  if "tuned_worst_vs_fastest" in summary:
    over = summary["shapes_where_tuned_is_over_1.15x_the_fastest"]
    verdict = "yes" if not over else "no: " + ", ".join(over)
    worst = summary["tuned_worst_vs_fastest"]
    lines.append(f"- tuned within 1.15x of the fastest kernel on every shape: **{verdict}** (worst {worst:.2f}x)")
  with_torch = sum("auto_vs_torch" in e for e in per_shape.values())
  if with_torch:
    lines.append(
      f"- auto within 1.25x of torch (fastest repeats): {', '.join(near_torch) or 'none'} "
      f"({len(near_torch)} of {with_torch})"
    )
  return lines


def shape_list(names: Sequence[str]) -> list[str]:
  """Markdown bullets describing the named (registered) benchmark shapes."""
  return [f"- `{n}`: {SHAPES_BY_NAME[n].describe()}" for n in names if n in SHAPES_BY_NAME]


def markdown(
  rows: Sequence[dict[str, Any]], summary: dict[str, Any], env: dict[str, str], memory: dict | None = None
) -> str:
  """The results as markdown: environment, the auto summary, targets, memory, every (shape, impl) row."""
  lines = ["# Kernel comparison: forward and forward+backward, median ms", ""]
  # The environment: date, commit, command, CPU, ISA, cores, load, versions, XLA_FLAGS, GEMM peak.
  lines += [f"- {k}: `{v}`" for k, v in env.items()]
  lines += ["", "## Shapes", "", *shape_list(list(summary["per_shape"]))]
  lines += ["", "## Forward+backward: lax, auto, tuned, the fastest kernel, torch", "", *summary_table(summary)]
  lines += ["", "## Targets", "", *targets(summary)]
  if memory:
    lines += ["", "## Peak memory (compiled memory analysis: arguments + outputs + temporaries)", ""]
    for key, value in memory.items():
      lines.append(f"- {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in value.items()))
  lines += [
    "",
    "## Every kernel",
    "",
    "| shape | impl | fwd ms | fwd GFLOP/s | fwd lax / it | fwd+bwd ms | fwd+bwd GFLOP/s | fwd+bwd % of GEMM peak "
    "| fwd+bwd lax / it | max rel err (y, dx, dw) |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for r in rows:
    if "skipped" in r:
      lines.append(f"| {r['shape']} | {r['impl']} | - | - | - | - | - | - | - | {r['skipped']} |")
      continue
    fraction = r.get("fb_peak_fraction")
    errs = {"lax": "(reference)", "torch": "-"}.get(r["impl"]) or ", ".join(
      f"{r[k]:.0e}" for k in ("err_y", "err_dx", "err_dw")
    )
    lines.append(
      f"| {r['shape']} | {r['impl']} | {_fmt(r.get('fwd_ms'))} | {_fmt(r.get('fwd_gflops'), 0)} "
      f"| {_fmt(r.get('fwd_speedup'))} | {_fmt(r.get('fb_ms'))} | {_fmt(r.get('fb_gflops'), 0)} "
      f"| {_fmt(None if fraction is None else 100 * fraction, 1)} | {_fmt(r.get('fb_speedup'))} | {errs} |"
    )
  return "\n".join(lines) + "\n"


def write(results: dict[str, Any], directory: str, stem: str = "kernels") -> tuple[str, str]:
  """Write ``results`` (rows, summary, env, memory) as ``stem.json`` and ``stem.md`` under ``directory``."""
  os.makedirs(directory, exist_ok=True)
  json_path, md_path = os.path.join(directory, f"{stem}.json"), os.path.join(directory, f"{stem}.md")
  with open(json_path, "w") as f:
    json.dump(results, f, indent=1)
  with open(md_path, "w") as f:
    f.write(markdown(results["rows"], results["summary"], results["env"], results.get("memory")))
  return json_path, md_path


__all__ = ["markdown", "shape_list", "summary_table", "targets", "write"]
