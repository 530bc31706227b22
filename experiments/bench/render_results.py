"""Write docs/benchmarks.md, the benchmark results page, from the JSON files in docs/bench/.

  python experiments/bench/render_results.py [--out docs/benchmarks.md]

Each table states what its JSON file records about the run (date, commit, CPU model, ISA, core
count, versions, load average, XLA flags) and "not recorded" for what it lacks, the command that
reproduces it, and the git commit that added the file. Nothing here measures anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "docs" / "bench"
NOT_RECORDED = "not recorded"


def _git_added(path: Path) -> str:
  """``<commit> (<date>)`` of the commit that last wrote ``path``, or "unknown" outside a git checkout."""
  try:
    out = subprocess.run(
      ["git", "log", "-1", "--format=%h (%ad)", "--date=short", "--", str(path.relative_to(ROOT))],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return out or "unknown"


def _load(pair: Any) -> str:
  """A load-average triple as its 1-minute value."""
  return f"{pair[0]:.2f}" if pair else NOT_RECORDED


def _flags(flags: str | None) -> str:
  """XLA_FLAGS as recorded: a value, XLA's defaults (empty, or compare_kernels' "(none: ...)"), or not recorded."""
  if flags is None:
    return NOT_RECORDED
  return f"`{flags}`" if flags and not flags.startswith("(none") else "none (XLA's defaults)"


def _provenance(path: Path, data: dict, command: str) -> str:
  """The run's facts as a bullet list: what the JSON records, "not recorded" for the rest."""
  env = data.get("env", {})
  torch = env.get("torch") or next((k.split(" ", 1)[1] for k in _keys(data) if k.startswith("torch ")), None)
  versions = [f"jax {data.get('jax') or env.get('jax')}" if data.get("jax") or env.get("jax") else "jax: not recorded"]
  for name in ("jaxlib", "onednn"):
    if env.get(name):
      versions.append(f"{name} {env[name]}")
  if torch:
    versions.append(f"torch {torch}")
  flags = data.get("xla_flags", env.get("XLA_FLAGS"))
  before, after = data.get("load_average_before"), data.get("load_average_after")
  load = f"{_load(before)} before, {_load(after)} after (1-minute)" if before or after else NOT_RECORDED
  if load == NOT_RECORDED and env.get("load_average"):
    load = f"{env['load_average']} before (1, 5, 15 minutes)"
  facts = [
    ("data", f"[`{path.relative_to(ROOT / 'docs').as_posix()}`]({path.relative_to(ROOT / 'docs').as_posix()})"),
    ("date", data.get("date", env.get("date", NOT_RECORDED))),
    ("commit measured", data.get("commit", env.get("commit", NOT_RECORDED))),
    ("file added in commit", _git_added(path)),
    ("CPU model", data.get("cpu_model", env.get("cpu", NOT_RECORDED))),
    ("ISA", data.get("isa", env.get("isa", NOT_RECORDED))),
    ("cores", env.get("cpu_count", NOT_RECORDED)),
    ("versions", ", ".join(versions)),
    ("XLA_FLAGS", _flags(flags)),
    ("load average", load),
    ("command", f"`{command}`"),
  ]
  return "\n".join(f"- {k}: {v}" for k, v in facts)


def _keys(data: dict) -> list[str]:
  """Top-level keys, and the keys of the dicts that hold per-trainer results."""
  return [*data, *data.get("runs", {}), *data.get("ms", {}), *data.get("trainers", {})]


def _table(header: list[str], rows: list[list[Any]]) -> str:
  """A Markdown table; floats with 3 significant digits (4 above 1000)."""

  def cell(v: Any) -> str:
    if isinstance(v, float):
      return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"
    return str(v)

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def kernels(path: Path, data: dict) -> str:
  """compare_kernels: forward+backward fastest-repeat ms per shape and kernel, auto's and tuned's picks."""
  rows = data["rows"]
  impls = [i for i in dict.fromkeys(r["impl"] for r in rows) if i not in ("auto", "tuned", "torch")]
  shapes = list(dict.fromkeys(r["shape"] for r in rows))
  ms = {(r["shape"], r["impl"]): r["fb_min_ms"] for r in rows if "fb_min_ms" in r}
  peak = {(r["shape"], r["impl"]): r.get("fb_peak_fraction") for r in rows}
  summary = data["summary"]
  body = []
  for s in shapes:
    picks = summary["per_shape"].get(s, {})
    fastest = picks.get("fastest", "-")
    fraction = peak.get((s, fastest))
    body.append(
      [
        s,
        *(ms.get((s, i), "-") for i in impls),
        picks.get("auto_choice", "-"),
        ms.get((s, "auto"), "-"),
        picks.get("tuned_choice", "-"),
        ms.get((s, "tuned"), "-"),
        fastest,
        "-" if fraction is None else f"{fraction:.0%}",
      ]  # fmt: skip
    )
  header = [*impls, "auto picked", "auto", "tuned picked", "tuned", "fastest", "fastest, % of GEMM peak"]
  notes = []
  if data.get("env", {}).get("gemm_peak_gflops"):
    notes.append(f"GEMM peak, GFLOP/s: {data['env']['gemm_peak_gflops']}.")
  if summary.get("target_geomean_auto_speedup"):
    notes.append(f"Geometric mean of lax / auto over the target shapes: {summary['target_geomean_auto_speedup']:.2f}x.")
  if summary.get("tuned_worst_vs_fastest"):
    notes.append(f"tuned / the fastest kernel, worst shape (medians): {summary['tuned_worst_vs_fastest']:.2f}x.")
  if data.get("env", {}).get("timing"):
    notes.append(f"Timing: {data['env']['timing']}.")
  return (
    "Forward + backward (value and gradients w.r.t. x and w of `0.5 * sum(y**2)`), fastest of the repeats, ms; "
    "`-` where a kernel refuses the call. The GEMM peak is a jitted float32 2048^3 `jnp.dot` timed in the same "
    "run; oneDNN's convolutions can exceed it (it is XLA's GEMM, not the CPU's limit). Medians, forward times and "
    "errors against lax are in the JSON and the Markdown beside it.\n\n"
    + _table(["shape", *header], body)
    + ("\n\n" + " ".join(notes) if notes else "")
  )


def throughput(path: Path, data: dict) -> str:
  """bench_training: images/s of full epochs, the trainers alternating epoch by epoch."""
  rows = []
  for name, t in data.items():
    if isinstance(t, dict) and "images_per_second" in t:
      ips = t["images_per_second"]
      ratio = t.get("median_ratio_vs_torch")
      rows.append(
        [
          name,
          len(ips),
          statistics.median(ips),
          max(ips),
          t.get("compile_seconds", "-"),
          "-" if ratio is None else f"{ratio:.2f}x",
        ]  # fmt: skip
      )
  ratios = "".join(
    f" impl={k}: images/s in the config's dtype over float32, median of the rounds: {v:.2f}x."
    for k, v in data.get("speedup_vs_float32", {}).items()
  )
  return (
    "Training epochs of the command's config (its model, optimiser and batch; the images of its data), "
    "the trainers alternating epoch by epoch."
    + ratios
    + "\n\n"
    + _table(["trainer", "epochs", "images/s (median)", "best epoch", "compile s", "vs torch (median ratio)"], rows)
  )


def time_to_accuracy(path: Path, data: dict) -> str:
  """bench_training --time-to-accuracy --seeds: wall-clock to the target per seed, set-up and compilation included."""
  rows = []
  for seed, result in data["per_seed"].items():
    for name, r in result["runs"].items():
      curve = ", ".join(f"{c['test_accuracy']:.2%}" for c in r["curve"])
      reached = "yes" if r["reached"] else "no (all epochs counted)"
      rows.append([seed, name, reached, r["epochs"], r["setup_seconds"], r["seconds"], curve])
  speedup = ", ".join(f"{k}: {v:.2f}x" for k, v in data.get("speedup_vs_torch", {}).items())
  return (
    f"`configs/lenet_speedrun.py` to {data['target']:.0%} test accuracy within {data['num_epochs']} epochs, "
    f"batch {data['batch_size']}; data loading ({data['data_seconds']:.1f} s) apart. Median over the seeds of "
    f"torch's seconds / jaxconv's: {speedup}.\n\n"
    + _table(["seed", "trainer", "reached", "epochs", "set-up + compile s", "seconds", "test accuracy per epoch"], rows)
  )


def step_columns(ms: dict[str, dict]) -> tuple[dict[str, dict[str, float]], list[str]]:
  """profile_step's ``ms`` (trainer -> part -> ms, plus an "in the loop" dict) as flat columns and their rows."""
  flat = {
    c: {k: v for k, v in parts.items() if k != "in the loop"} | parts.get("in the loop", {}) for c, parts in ms.items()
  }
  return flat, list(dict.fromkeys(key for column in flat.values() for key in column))


def step_breakdown(path: Path, data: dict) -> str:
  """profile_step: ms per part of a LeNet training step per trainer, the in-loop ops by layer, the GEMM bound."""
  columns = list(data["ms"])
  flat, rows = step_columns(data["ms"])
  body = [
    [
      row.strip() if not row.startswith("  ") else f"in the loop: {row.strip()}",
      *(flat[c].get(row, "-") for c in columns),
    ]
    for row in rows
  ]
  notes = [
    'Each part runs jitted alone, forward then backward, median ms per call; "step" is one training step, '
    '"step in a 50-step loop" a step of the compiled loop the training runs. The "in the loop" rows charge '
    "each XLA op of that loop to its layer from a profiler trace (ops on concurrent threads both count)."
  ]
  if data.get("compiler_options"):
    notes.append(
      f"The jaxconv columns are compiled with the training programs' XLA options ({data['compiler_options']}), "
      'a column marked "(XLA defaults)" with XLA\'s defaults.'
    )
  if data.get("gemm_bound_ms"):
    notes.append(
      f"GEMM-bound step: {data['step_gflop']:.3f} GFLOP (XLA's cost analysis of the step on the lax kernel) at "
      f"{data['gemm_peak_gflops']:.0f} GFLOP/s (a jitted float32 2048^3 `jnp.dot`, same run) = "
      f"{data['gemm_bound_ms']:.2f} ms."
    )
  return " ".join(notes) + "\n\n" + _table(["part (ms)", *columns], body)


# file -> (title, command, renderer)
PAGES: dict[str, tuple[str, str, Callable[[Path, dict], str]]] = {
  "kernels.json": (
    "Kernels, default XLA flags",
    "python experiments/compare_kernels.py --impl toeplitz winograd depthwise fft im2col hybrid onednn auto tuned "
    "--repeats 5 --no-torch",
    kernels,
  ),
  "kernels_bf16.json": (
    "Kernels in bfloat16, default XLA flags",
    "python experiments/compare_kernels.py --dtype bfloat16 --impl toeplitz winograd depthwise fft im2col hybrid "
    "onednn auto --repeats 5 --no-torch (--out DIR writes kernels.json and kernels.md, renamed *_bf16 here)",
    kernels,
  ),
  "lenet_throughput_1.json": (
    "LeNet training throughput against PyTorch eager (1)",
    "python experiments/bench_training.py --rounds 5 --impl auto",
    throughput,
  ),
  "lenet_throughput_2.json": (
    "LeNet training throughput against PyTorch eager (2)",
    "python experiments/bench_training.py --rounds 5 --impl auto",
    throughput,
  ),
  "lenet_step_breakdown_before.json": (
    "Where a LeNet training step's time went before the batch split, against PyTorch eager",
    "python experiments/bench/profile_step.py --impl auto (at the commit measured)",
    step_breakdown,
  ),
  "lenet_step_breakdown.json": (
    "Where a LeNet training step's time goes, float32 and bfloat16, against PyTorch eager",
    "python experiments/bench/profile_step.py --impl auto --dtype float32 --dtype bfloat16",
    step_breakdown,
  ),
  "lenet_speedrun_seeds.json": (
    "Speedrun to 99% over seeds, against PyTorch eager",
    "python experiments/bench_training.py --time-to-accuracy 0.99 --config configs/lenet_speedrun.py --seeds 0 1 2",
    time_to_accuracy,
  ),
  **{
    f"lenet_bf16_throughput_{run}.json": (
      f"LeNet training throughput, bfloat16 against float32 ({run})",
      "python experiments/bench_training.py --config configs/lenet_bf16.py --rounds 3 --notorch",
      throughput,
    )
    for run in (1, 2)
  },
  "resnet_auto_vs_lax.json": (
    "ResNet training throughput, auto against lax",
    "python experiments/bench_training.py --config configs/resnet_mnist.py --impl auto --impl lax --notorch "
    "--rounds 1 --config.data.train_size=2560",
    throughput,
  ),
}
# The same scripts on other machines (docs/bench/<folder>/), each section's title marked with its name:
# an AMD EPYC with AVX-512 and AVX512-BF16 but no AMX (Zen 4), and an AMD EPYC with AVX2 only (Zen 3).
OTHER_MACHINES = {"amd_epyc": "AMD EPYC", "amd_epyc_avx2": "AMD EPYC, AVX2"}

# What each other machine's step breakdown "before" preceded (a change of its own), and its command.
_BEFORE = {
  "amd_epyc": (
    "Where a LeNet training step's time went before conv1's single-channel loops, float32 and bfloat16",
    "python experiments/bench/profile_step.py --impl auto --dtype float32 --dtype bfloat16 (at the commit measured)",
  ),
  "amd_epyc_avx2": (
    "Where a LeNet training step's time went before the direct loops' AVX2 build",
    "python experiments/bench/profile_step.py --impl auto (at the commit measured)",
  ),
}


def _on_other_machine(folder: str, name: str) -> tuple[str, str, Callable[[Path, dict], str]]:
  """The page entry of ``name`` (a file here) for machine ``folder``'s run of the same command."""
  title, command, renderer = PAGES[name]
  if name == "lenet_step_breakdown_before.json":
    title, command = _BEFORE[folder]
  return f"{title} ({OTHER_MACHINES[folder]})", command, renderer


PAGES |= {f"{folder}/{name}": _on_other_machine(folder, name) for folder in OTHER_MACHINES for name in list(PAGES)}

INTRO = """# Benchmarks

Results of the benchmark scripts, one section per JSON file in `docs/bench/`, rendered by
`python experiments/bench/render_results.py`. Each section lists what its file records about the
run: date, commit, CPU, ISA, cores, versions, XLA flags, load average and the command that
reproduces it. The timing scripts interleave the contenders in one process, so read the ratios:
absolute times vary with the machine and its load. The unmarked sections ran on a 2-core Intel Xeon
with AVX-512, AVX512-BF16 and AMX; those marked "(AMD EPYC)" ran the same scripts on a 2-core AMD
EPYC with AVX-512 and AVX512-BF16 but without AMX, and those marked "(AMD EPYC, AVX2)" on a 2-core
AMD EPYC with AVX2 and FMA only.
"""


def render() -> str:
  """The whole page."""
  sections = [INTRO]
  for name, (title, command, renderer) in PAGES.items():
    path = BENCH / name
    if not path.exists():
      continue
    data = json.loads(path.read_text())
    sections.append(f"## {title}\n\n{_provenance(path, data, command)}\n\n{renderer(path, data)}\n")
  return "\n".join(sections)


def main() -> None:
  """Parse ``--out`` and write the page."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
  args = parser.parse_args()
  args.out.write_text(render())
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
