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
  if torch:
    versions.append(f"torch {torch}")
  flags = data.get("xla_flags", env.get("XLA_FLAGS"))
  before, after = data.get("load_average_before"), data.get("load_average_after")
  load = f"{_load(before)} before, {_load(after)} after (1-minute)" if before or after else NOT_RECORDED
  facts = [
    ("data", f"[`{path.relative_to(ROOT / 'docs').as_posix()}`]({path.relative_to(ROOT / 'docs').as_posix()})"),
    ("date", data.get("date", NOT_RECORDED)),
    ("commit measured", data.get("commit", NOT_RECORDED)),
    ("file added in commit", _git_added(path)),
    ("CPU model", data.get("cpu_model", NOT_RECORDED)),
    ("ISA", data.get("isa", NOT_RECORDED)),
    ("machine", env.get("machine", NOT_RECORDED)),
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
  """compare_kernels: forward+backward fastest-repeat ms per shape and kernel."""
  rows = data["rows"]
  impls = [i for i in dict.fromkeys(r["impl"] for r in rows) if i not in ("auto", "torch")]
  shapes = list(dict.fromkeys(r["shape"] for r in rows))
  ms = {(r["shape"], r["impl"]): r["fb_min_ms"] for r in rows if "fb_min_ms" in r}
  summary = data["summary"]["per_shape"]
  body = []
  for s in shapes:
    picked = summary.get(s, {}).get("auto_choice", "-")
    body.append([s, *(ms.get((s, i), "-") for i in impls), ms.get((s, "torch"), "-"), picked, ms.get((s, "auto"), "-")])
  table = _table(["shape", *impls, "torch", "auto picked", "auto"], body)
  geomean = data["summary"].get("target_geomean_auto_speedup")
  note = f"\n\nGeometric mean of lax / auto over the target shapes: {geomean:.2f}x." if geomean else ""
  return (
    "Forward + backward (value and gradients w.r.t. x and w of `0.5 * sum(y**2)`), fastest repeat, ms. "
    "Medians, forward times, GFLOP/s and errors against lax are in the JSON and in the Markdown beside it.\n\n"
    + table
    + note
  )


def flax_cnn(path: Path, data: dict) -> str:
  """bench_flax_cnn: Flax's MNIST CNN with its default convolution against the drop-in."""
  rows = [
    [
      name,
      t["median_images_per_second"],
      t["best_images_per_second"],
      t["compile_seconds"],
      f"{t['test_accuracy']:.2%}",
      f"{t['median_ratio_vs_flax']:.2f}x",
    ]
    for name, t in data["trainers"].items()
  ]
  intro = (
    f"Flax's MNIST-example CNN, epochs of {data['images_per_epoch']:,} images, batch {data['batch_size']}, "
    "one jitted step per batch.\n\n"
  )
  return intro + _table(
    ["trainer", "images/s (median)", "best epoch", "compile s", "test accuracy", "vs Flax default"], rows
  )


def throughput(path: Path, data: dict) -> str:
  """bench_training: images/s of full epochs alternating with torch eager."""
  rows = []
  for name, t in data.items():
    if isinstance(t, dict) and "images_per_second" in t:
      ips = t["images_per_second"]
      rows.append(
        [
          name,
          len(ips),
          statistics.median(ips),
          max(ips),
          t.get("compile_seconds", "-"),
          f"{t['median_ratio_vs_torch']:.2f}x",
        ]
      )
  return "Modern LeNet-5, Adam, batch 128, MNIST.\n\n" + _table(
    ["trainer", "epochs", "images/s (median)", "best epoch", "compile s", "vs torch (median ratio)"], rows
  )


def time_to_accuracy(path: Path, data: dict) -> str:
  """bench_training --time-to-accuracy: wall-clock to the target, set-up and compilation included."""
  rows = [
    [
      name,
      r["setup_seconds"],
      r["epochs"],
      r["seconds"],
      ", ".join(f"{c['test_accuracy']:.2%}" for c in r["curve"]),
    ]
    for name, r in data["runs"].items()
  ]
  speedup = ", ".join(f"{k}: {v:.2f}x" for k, v in data.get("speedup_vs_torch", {}).items())
  return (
    f"`configs/lenet_speedrun.py` to {data['target']:.0%} test accuracy; data loading "
    f"({data['data_seconds']:.1f} s) apart. Torch's seconds / jaxconv's: {speedup}.\n\n"
    + _table(["trainer", "set-up + compile s", "epochs", "seconds to target", "test accuracy per epoch"], rows)
  )


def step_breakdown(path: Path, data: dict) -> str:
  """profile_step: ms per step charged to each layer from a profiler trace of the 50-step loop."""
  runs = {k: v["in the loop"] for k, v in data["ms"].items() if "in the loop" in v}
  parts = list(next(iter(runs.values())))
  rows = [[p.strip(), *(runs[r][p] for r in runs)] for p in parts]
  return "ms per step, each XLA op of the compiled 50-step loop charged to its layer.\n\n" + _table(
    ["part", *runs], rows
  )


def transforms(path: Path, data: dict) -> str:
  """bench_transforms: reverse-mode time of the transform mechanism against the code before it."""
  rows = [[r["shape"], r["impl"], r["old_ms"], r["new_ms"], f"{r['ratio']:.2f}"] for r in data["rows"]]
  return (
    f"Forward + backward ms, {data['rounds']} rounds x {data['repeats']} repeats, before and after "
    "the shared transform mechanism (`jaxconv/kernels/primitives.py`).\n\n"
    + _table(["shape", "impl", "before ms", "after ms", "after / before"], rows)
  )


# file -> (title, command, renderer)
PAGES: dict[str, tuple[str, str, Callable[[Path, dict], str]]] = {
  "kernels.json": ("Kernels, default XLA flags", "python experiments/compare_kernels.py --repeats 5", kernels),
  "no_ynn_conv/kernels.json": (
    "Kernels, XLA's YNN convolution fusion off",
    "XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution "
    "python experiments/compare_kernels.py --repeats 5",
    kernels,
  ),
  "flax_cnn.json": (
    "Flax's CNN: default convolution against the drop-in",
    "python experiments/bench/bench_flax_cnn.py --rounds 3 --train_size 6400 --test_size 2000 --impl auto",
    flax_cnn,
  ),
  **{
    f"training_throughput_{i}.json": (
      f"LeNet training throughput against PyTorch ({i})",
      "python experiments/bench_training.py --rounds 5 --impl auto",
      throughput,
    )
    for i in range(1, 7)
  },
  "training_auto_vs_onednn.json": (
    "LeNet training throughput: auto (then toeplitz) against oneDNN",
    "python experiments/bench_training.py --rounds 3 --impl auto --impl onednn",
    throughput,
  ),
  "time_to_accuracy.json": (
    "Speedrun to 99% (1)",
    "python experiments/bench_training.py --time-to-accuracy 0.99 --config configs/lenet_speedrun.py --impl auto",
    time_to_accuracy,
  ),
  "time_to_accuracy_2.json": (
    "Speedrun to 99% (2)",
    "python experiments/bench_training.py --time-to-accuracy 0.99 --config configs/lenet_speedrun.py --impl auto",
    time_to_accuracy,
  ),
  "step_breakdown.json": (
    "Where a LeNet step's time goes (1)",
    "python experiments/bench/profile_step.py --impl auto --impl toeplitz",
    step_breakdown,
  ),
  "step_breakdown_2.json": (
    "Where a LeNet step's time goes (2)",
    "python experiments/bench/profile_step.py --impl auto --impl toeplitz",
    step_breakdown,
  ),
  "step_breakdown_channels_last.json": (
    "Where a LeNet step's time goes, oneDNN all channels-last",
    "JAXCONV_ONEDNN_LAYOUT=channels_last python experiments/bench/profile_step.py --impl auto",
    step_breakdown,
  ),
  "transforms_before_after.json": (
    "The transform mechanism, before and after",
    "python experiments/bench/bench_transforms.py --rounds 2 --repeats 5",
    transforms,
  ),
}

INTRO = """# Benchmarks

Results of the benchmark scripts, one section per JSON file in `docs/bench/`, rendered by
`python experiments/bench/render_results.py`. Each section lists what its file records about the
run and says "not recorded" for the rest; rerun its command to reproduce it (the timing scripts
interleave the contenders in one process, so read the ratios: absolute times vary with the machine
and its load). "File added in commit" is when the result entered the repository, not necessarily
the code it measured.
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
