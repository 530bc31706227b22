"""Compare every registered conv kernel with lax (and PyTorch CPU when installed): values, gradients, speed.

  python experiments/compare_kernels.py                                  # all kernels, all shapes
  python experiments/compare_kernels.py --impl im2col fft --shapes lenet_conv1 large_15x15
  python experiments/compare_kernels.py --kernels-from my_kernels.py --impl mine   # your own kernel
  python experiments/compare_kernels.py --repeats 20 --out docs/bench    # also writes kernels.json / kernels.md
  python experiments/compare_kernels.py --dtype bfloat16 --impl onednn toeplitz auto   # bfloat16 operands

``--kernels-from FILE`` (repeatable) imports a Python file that registers kernels
(``jaxconv.kernels.register``); they are compared like the built-in ones. Without ``--out`` the
script only prints; with ``--out DIR`` it writes ``DIR/kernels.json`` and ``DIR/kernels.md``.

Benchmarks run un-niced; every kernel is timed interleaved with lax in this one process, so
ratios are meaningful on a noisy machine even when absolute times are not.
"""

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import jax.numpy as jnp

# The benchmarks package lives at the repository root, beside the library, not inside it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness, report, shapes

DTYPES = ("float32", "bfloat16", "float16")


def parse_args() -> argparse.Namespace:
  """Command-line flags."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--impl",
    nargs="+",
    action="extend",
    default=[],
    metavar="NAME",
    help="kernels to compare (default: all registered); lax is always included",
  )
  parser.add_argument(
    "--shapes",
    nargs="+",
    action="extend",
    default=[],
    metavar="NAME",
    help=f"shapes (default: all): {', '.join(shapes.SHAPES_BY_NAME)}",
  )
  parser.add_argument(
    "--dtype",
    default="float32",
    choices=DTYPES,
    help="the operands' dtype (PyTorch's columns are float32 only: left out for another dtype)",
  )
  parser.add_argument("--repeats", type=int, default=10, help="timed samples per kernel and mode (median reported)")
  parser.add_argument(
    "--min-sample-ms",
    type=float,
    default=20.0,
    help="a timed sample of a faster call is the mean of back-to-back calls filling this time (0: one call)",
  )
  parser.add_argument(
    "--no-torch", action="store_true", help="leave out the PyTorch columns even when torch is importable"
  )
  parser.add_argument(
    "--max-call-ms", type=float, default=3000.0, help="skip a kernel whose warm forward+backward takes longer"
  )
  parser.add_argument(
    "--memory", action="store_true", help="also measure compiled peak memory vs lax on resnet_3x3 (im2col, hybrid)"
  )
  parser.add_argument(
    "--kernels-from",
    action="append",
    default=[],
    metavar="FILE",
    help="a Python file that registers kernels (jaxconv.kernels.register), imported first; repeatable",
  )
  parser.add_argument(
    "--out", default=None, metavar="DIR", help="write DIR/kernels.json and DIR/kernels.md (default: only print)"
  )
  return parser.parse_args()


def import_kernel_file(path: str, index: int) -> ModuleType:
  """Import the file at ``path`` as a module (its folder on ``sys.path``, as ``python FILE`` has it).

  Raises:
    FileNotFoundError: no file at ``path``.
  """
  file = Path(path).expanduser().resolve()
  if not file.is_file():
    raise FileNotFoundError(f"--kernels-from: no file {path!r}")
  sys.path.insert(0, str(file.parent))
  # A private module name: the file's stem may shadow a real module (e.g. "kernels.py").
  name = f"_compare_kernels_user_{index}_{file.stem}"
  spec = importlib.util.spec_from_file_location(name, file)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def main() -> None:
  """Import the user's kernel files, run the comparison, print the rows; with ``--out``, write JSON and markdown."""
  args = parse_args()
  for index, path in enumerate(args.kernels_from):
    try:
      import_kernel_file(path, index)
    except FileNotFoundError as e:
      sys.exit(f"compare_kernels.py: {e}")
  try:
    cases = shapes.select_shapes(args.shapes)
    impls = harness.select_impls(args.impl)
  except ValueError as e:
    sys.exit(f"compare_kernels.py: {e}")
  results = harness.run(
    cases,
    impls,
    repeats=args.repeats,
    with_torch=not args.no_torch and args.dtype == "float32",
    dtype=jnp.dtype(args.dtype),
    max_call_ms=args.max_call_ms,
    min_sample_ms=args.min_sample_ms,
  )
  if args.memory:
    results["memory"] = {
      f"{impl} on resnet_3x3": harness.memory_ratio(shapes.SHAPES_BY_NAME["resnet_3x3"], impl)
      for impl in ("im2col", "hybrid")
    }
  print(report.markdown(results["rows"], results["summary"], results["env"], results.get("memory")))
  if args.out:  # '' writes nothing either
    for path in report.write(results, args.out):
      print("wrote", path)


if __name__ == "__main__":
  main()
