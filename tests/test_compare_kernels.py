"""experiments/compare_kernels.py: user kernel files (--kernels-from), printing only without --out, writing with it."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "experiments/compare_kernels.py"  # run_script takes it from the root
# The smallest named shape, one timed repeat, no torch: the run checks plumbing, not speed.
FAST = ["--shapes", "lenet_conv2", "--repeats", "1", "--no-torch"]

KERNEL_FILE = """
from jaxconv import kernels
from jaxconv.kernels.lax import conv_lax


@kernels.register("{name}")
def {name}(x, w, g):
    '''lax's correlation{note}.'''
    return conv_lax(x, w, g){scale}
"""


def kernel_file(directory: Path, name: str, *, scale: str = "", note: str = "") -> Path:
  """A user's kernel file registering ``name`` (lax's forward, optionally scaled)."""
  path = directory / f"{name}_file.py"
  path.write_text(textwrap.dedent(KERNEL_FILE.format(name=name, scale=scale, note=note)))
  return path


def checkout_state() -> tuple[str, dict[str, float]]:
  """What a run could change in the checkout: git's view (untracked files included) and docs/bench's mtimes."""
  status = subprocess.run(
    ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  bench = ROOT / "docs" / "bench"
  mtimes = {p.name: p.stat().st_mtime for p in bench.glob("*")} if bench.is_dir() else {}
  return status, mtimes


@pytest.mark.slow  # runs the script end to end
def test_user_kernels_are_compared_and_nothing_is_written_without_out(tmp_path, run_script):
  good = kernel_file(tmp_path, "user_good")
  wrong = kernel_file(tmp_path, "user_wrong", scale=" * 2.0", note=" doubled")
  before = checkout_state()
  users = ["--kernels-from", str(good), "--kernels-from", str(wrong), "--impl", "user_good", "user_wrong"]
  out = run_script(SCRIPT, *users, *FAST)
  assert out.returncode == 0, out.stderr[-3000:]
  assert checkout_state() == before, "compare_kernels.py wrote into the checkout without --out"
  assert "wrote" not in out.stdout
  every_kernel = out.stdout.partition("## Every kernel")[2]
  table = [line for line in every_kernel.splitlines() if line.startswith("| lenet_conv2")]
  assert [line.split("|")[2].strip() for line in table] == ["lax", "user_good", "user_wrong"], out.stdout[-3000:]


@pytest.mark.slow  # runs the script end to end
def test_out_writes_json_and_markdown(tmp_path, run_script):
  good = kernel_file(tmp_path, "user_good")
  wrong = kernel_file(tmp_path, "user_wrong", scale=" * 2.0")
  out = run_script(
    SCRIPT, "--kernels-from", str(good), "--kernels-from", str(wrong), "--impl", "user_good", "user_wrong",
    *FAST, "--out", str(tmp_path / "out"),
  )  # fmt: skip
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((tmp_path / "out" / "kernels.json").read_text())
  rows = {r["impl"]: r for r in results["rows"]}
  assert set(rows) == {"lax", "user_good", "user_wrong"}
  # The values are checked against lax like a built-in kernel's: exact for the copy, off by 1x for the double.
  errors = {impl: max(v for k, v in rows[impl].items() if k.startswith("err_")) for impl in ("user_good", "user_wrong")}
  assert errors["user_good"] < 1e-5 and errors["user_wrong"] > 0.5, errors
  assert "user_good" in (tmp_path / "out" / "kernels.md").read_text()


@pytest.mark.parametrize(
  "args, message",
  [
    (["--kernels-from", "/nonexistent/kernels.py"], "no file '/nonexistent/kernels.py'"),
    (["--impl", "not_registered"], "unknown ['not_registered']"),
  ],
)
def test_refusals_are_one_line(args, message, run_script):
  out = run_script(SCRIPT, *args, *FAST)
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [out.stderr.strip()] and message in out.stderr, out.stderr
