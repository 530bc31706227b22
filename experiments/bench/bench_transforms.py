"""Reverse-mode speed of every kernel, the current code against the code before the transform mechanism.

  python experiments/bench/bench_transforms.py         # old tree: a git worktree of 8e1d691 in /tmp
  python experiments/bench/bench_transforms.py --old-tree /path/to/old/checkout --rounds 7 --repeats 10
  python experiments/bench/bench_transforms.py --shapes tiny --rounds 1 --repeats 2   # a smoke test

The kernels used to carry their own ``custom_vjp``; now every kernel runs through the bilinear
primitives of ``jaxconv.kernels.primitives``, whose transposes call the same hand-written
backward passes. This times ``jit(value_and_grad)`` (forward + backward, gradients of x, w and b)
per kernel and shape in two worker processes, one importing the current tree and one the old,
in interleaved rounds (the order alternates each round), so that drift on a loaded machine hits
both alike. It prints per kernel and shape the median milliseconds of each tree and the ratio
new / old (> 1: the new code is slower), a geometric mean per kernel, and the largest relative
difference between the two trees' gradients (they must agree).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

OLD_COMMIT = "8e1d691"
REPO = Path(__file__).resolve().parents[2]
# name -> (x shape, w shape, conv keywords). LeNet's two convs as in compare_kernels; ResNet's 3x3 at batch 8.
SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...], dict]] = {
  "lenet_conv1": ((128, 28, 28, 1), (5, 5, 1, 6), dict(padding=2)),
  "lenet_conv2": ((128, 14, 14, 6), (5, 5, 6, 16), {}),
  "resnet_3x3_b8": ((8, 56, 56, 64), (3, 3, 64, 64), dict(padding="same")),
  "tiny": ((2, 8, 8, 2), (3, 3, 2, 4), dict(padding=1)),
}
DEFAULT_SHAPES = ("lenet_conv1", "lenet_conv2", "resnet_3x3_b8")


# --------------------------------------------------------------------------------------------
# worker: one process per tree, answering JSON requests line by line on stdin/stdout


def worker(tree: str) -> None:
  """Import jaxconv from ``tree`` and time the requests that arrive on stdin, one JSON line each."""
  sys.path.insert(0, tree)
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jaxconv as jc

  assert Path(jc.__file__).resolve().is_relative_to(Path(tree).resolve()), f"imported {jc.__file__}, not from {tree}"
  compiled: dict[tuple[str, str], object] = {}

  def step(shape: str, impl: str):
    key = (shape, impl)
    if key not in compiled:
      x_shape, w_shape, kw = SHAPES[shape]
      rng = np.random.default_rng(0)
      x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
      w = jnp.asarray(rng.standard_normal(w_shape) / math.sqrt(math.prod(w_shape[:-1])), jnp.float32)
      b = jnp.zeros(w_shape[-1], jnp.float32)
      y_shape = jax.eval_shape(lambda x, w, b: jc.conv(x, w, b, impl=impl, **kw), x, w, b).shape
      ct = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
      loss = lambda x, w, b: jnp.sum(jc.conv(x, w, b, impl=impl, **kw) * ct)
      f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
      start = time.perf_counter()
      out = jax.block_until_ready(f(x, w, b))
      compiled[key] = (f, (x, w, b), time.perf_counter() - start, out)
    return compiled[key]

  print(json.dumps({"ready": jc.__file__, "impls": list(jc.available_impls())}), flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    try:
      f, args, compile_s, out = step(request["shape"], request["impl"])
      times = []
      for _ in range(request["repeats"]):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
      # A fingerprint of the gradients: the parent compares the two trees' values.
      fingerprint = [float(out[0])] + [float(jnp.sum(g * g)) for g in out[1]]
      reply = {"seconds": times, "compile_s": compile_s, "fingerprint": fingerprint}
    except Exception as e:
      reply = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    print(json.dumps(reply), flush=True)


class Worker:
  """A worker subprocess importing jaxconv from one tree."""

  def __init__(self, label: str, tree: Path):
    self.label = label
    env = {**os.environ, "PYTHONPATH": ""}
    self.proc = subprocess.Popen(
      [sys.executable, __file__, "--worker", str(tree)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
      cwd="/",
    )
    hello = self._read()
    self.impls = hello["impls"]
    print(f"{label}: jaxconv from {hello['ready']}", flush=True)

  def _read(self) -> dict:
    assert self.proc.stdout is not None
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the {self.label} worker exited (code {self.proc.wait()})")
    return json.loads(line)

  def ask(self, shape: str, impl: str, repeats: int) -> dict:
    assert self.proc.stdin is not None
    self.proc.stdin.write(json.dumps({"shape": shape, "impl": impl, "repeats": repeats}) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    assert self.proc.stdin is not None
    self.proc.stdin.close()
    self.proc.wait()


# --------------------------------------------------------------------------------------------
# parent


def old_tree(path: str | None) -> Path:
  """The checkout of the old code: ``path``, or a git worktree of ``OLD_COMMIT`` made (once) in /tmp."""
  if path:
    return Path(path)
  tree = Path("/tmp") / f"jaxconv-{OLD_COMMIT}"
  if not (tree / "jaxconv" / "__init__.py").exists():
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), OLD_COMMIT], check=True)
  return tree


def relative_difference(a: list[float], b: list[float]) -> float:
  return max(abs(x - y) / max(abs(x), abs(y), 1e-30) for x, y in zip(a, b))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--old-tree", default=None, help=f"checkout of the old code (default: a git worktree of {OLD_COMMIT} in /tmp)"
  )
  parser.add_argument("--impl", nargs="+", default=[], help="kernels (default: every kernel both trees register)")
  parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), choices=list(SHAPES))
  parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (order new/old alternates)")
  parser.add_argument("--repeats", type=int, default=10, help="timed calls per kernel, shape, tree and round")
  parser.add_argument("--json", default="", help="write the results here too")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args.worker)
    return

  workers = {"new": Worker("new", REPO), "old": Worker("old", old_tree(args.old_tree))}
  impls = args.impl or [i for i in workers["new"].impls if i in workers["old"].impls]
  per_round: dict[tuple[str, str, str], list[float]] = {}
  replies: dict[tuple[str, str, str], dict] = {}
  for r in range(args.rounds):
    order = ("new", "old") if r % 2 == 0 else ("old", "new")
    for shape in args.shapes:
      for impl in impls:
        for label in order:
          reply = workers[label].ask(shape, impl, args.repeats)
          replies[(label, shape, impl)] = reply
          if "seconds" in reply:
            per_round.setdefault((label, shape, impl), []).append(statistics.median(reply["seconds"]))
    print(f"round {r + 1}/{args.rounds} done", flush=True)
  for w in workers.values():
    w.close()

  rows = []
  print(
    "\n| shape | impl | new ms | old ms | new / old | grad rel. diff | compile new / old s |"
    "\n|---|---|---:|---:|---:|---:|---|"
  )
  for shape in args.shapes:
    for impl in impls:
      new, old = replies[("new", shape, impl)], replies[("old", shape, impl)]
      if "error" in new or "error" in old:
        print(f"| {shape} | {impl} | {new.get('error', '')} | {old.get('error', '')} | | | |")
        continue
      new_ms = 1e3 * statistics.median(per_round[("new", shape, impl)])
      old_ms = 1e3 * statistics.median(per_round[("old", shape, impl)])
      diff = relative_difference(new["fingerprint"], old["fingerprint"])
      rows.append(dict(shape=shape, impl=impl, new_ms=new_ms, old_ms=old_ms, ratio=new_ms / old_ms, grad_rel_diff=diff))
      print(
        f"| {shape} | {impl} | {new_ms:.2f} | {old_ms:.2f} | {new_ms / old_ms:.3f} | {diff:.1e} "
        f"| {new['compile_s']:.1f} / {old['compile_s']:.1f} |"
      )
  print("\ngeometric mean new / old per kernel:")
  for impl in impls:
    ratios = [row["ratio"] for row in rows if row["impl"] == impl]
    if ratios:
      print(f"  {impl:10s} {math.exp(statistics.fmean(math.log(q) for q in ratios)):.3f}  ({len(ratios)} shapes)")
  if args.json:
    Path(args.json).write_text(json.dumps({"rows": rows, "rounds": args.rounds, "repeats": args.repeats}, indent=1))
    print("wrote", args.json)


if __name__ == "__main__":
  main()
