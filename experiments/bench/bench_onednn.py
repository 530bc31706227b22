"""oneDNN kernel vs lax vs PyTorch, forward+backward per benchmark shape, and what its threads do to XLA.

  python experiments/bench/bench_onednn.py                          # all shapes, 5 repeats
  python experiments/bench/bench_onednn.py --shapes resnet_3x3 --repeats 10
  OMP_WAIT_POLICY=passive python experiments/bench/bench_onednn.py  # OpenMP workers sleep at once

Per shape, interleaved in one process (fastest of ``--repeats``, ms): lax fwd+bwd (``jax.vjp`` of
``0.5 * sum(y**2)``), the oneDNN raw functions (forward, then input_grad and kernel_grad of
``dy = y``) with OpenMP's default team and capped at one thread, and torch (oneDNN inside).
Then the interference test: an XLA-only step (matmul + tanh, on XLA's intra-op pool) timed
alone and right after a oneDNN call in the same jit; the difference is what oneDNN's OpenMP team
(spinning after its parallel region, by default) costs the rest of the step.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's benchmarks/

import benchmarks as bench
from jaxconv.geometry import conv_geometry
from jaxconv.kernels import onednn
from jaxconv.kernels.lax import dimension_numbers


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--shapes", nargs="+", default=[], metavar="NAME", help=f"shapes (default: all): {', '.join(bench.SHAPES_BY_NAME)}"
  )
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (fastest reported)")
  return parser.parse_args()


def _geometry(shape: bench.Shape):
  return conv_geometry(
    shape.x,
    shape.w,
    "float32",
    stride=shape.stride,
    padding=shape.padding,
    dilation=shape.dilation,
    groups=shape.groups,
  )


def _lax_fb(g):
  def loss(x, w):
    y = lax.conv_general_dilated(
      x,
      w,
      g.stride,
      g.padding,
      rhs_dilation=g.dilation,
      dimension_numbers=dimension_numbers(g.rank),
      feature_group_count=g.groups,
    )
    return 0.5 * jnp.sum(y * y)

  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _onednn_fb(g, threads: int):
  """oneDNN forward+backward traced with the thread cap ``threads`` (0: OpenMP's default)."""
  os.environ[onednn.THREADS_ENV] = str(threads)

  def fb(x, w):
    y = onednn.forward(x, w, g)
    return onednn.input_grad(y, w, g), onednn.kernel_grad(x, y, g)

  fn = jax.jit(fb)
  return fn


def _interference(x, w, g, repeats: int) -> dict[str, float]:
  """ms of an XLA-only step alone, of a oneDNN forward alone, and of both in one jit."""
  a = jnp.ones((768, 768), jnp.float32)
  xla = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
  conv = _onednn_fb(g, 0)
  both = jax.jit(lambda x, w, a: (conv(x, w), xla(a)))
  times = bench.time_interleaved(
    {"xla": lambda: xla(a), "onednn": lambda: conv(x, w), "both": lambda: both(x, w, a)}, repeats
  )
  best = {k: min(v) for k, v in times.items()}
  best["cost"] = best["both"] - best["onednn"] - best["xla"]
  return best


def main() -> None:
  args = parse_args()
  shapes = bench.select_shapes(args.shapes)
  print(
    f"{onednn.info()}; cpus {os.cpu_count()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}; "
    f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(default)')}; load average {os.getloadavg()}"
  )
  print(f"{'shape':16} {'lax':>9} {'onednn':>9} {'1 thread':>9} {'torch':>9} {'lax/onednn':>11} {'onednn/torch':>13}")
  for shape in shapes:
    g = _geometry(shape)
    reason = onednn.supports_onednn(g)
    if reason is not None:
      print(f"{shape.name:16} onednn refuses: {reason}")
      continue
    x, w, _ = bench.random_inputs(shape)
    calls = {"lax": _lax_fb(g), "onednn": _onednn_fb(g, 0), "onednn1": _onednn_fb(g, 1)}
    thunks = {name: (lambda f=f, x=x, w=w: f(x, w)) for name, f in calls.items()}
    torch_calls = bench.torch_fns(shape, x, w)
    if torch_calls is not None:
      thunks["torch"] = torch_calls[1]
    for thunk in thunks.values():  # compile and warm up
      jax.block_until_ready(thunk())
    best = {name: min(t) for name, t in bench.time_interleaved(thunks, args.repeats).items()}
    t = best.get("torch", float("nan"))
    print(
      f"{shape.name:16} {best['lax']:9.2f} {best['onednn']:9.2f} {best['onednn1']:9.2f} {t:9.2f} "
      f"{best['lax'] / best['onednn']:11.2f} {best['onednn'] / t:13.2f}"
    )
  os.environ[onednn.THREADS_ENV] = "0"
  shape = bench.SHAPES_BY_NAME["lenet_conv2"]
  x, w, _ = bench.random_inputs(shape)
  r = _interference(x, w, _geometry(shape), max(args.repeats, 10))
  print(
    f"interference (lenet_conv2 fwd+bwd, then a 768^3 XLA matmul step), ms: xla alone {r['xla']:.2f}, "
    f"onednn alone {r['onednn']:.2f}, both in one jit {r['both']:.2f}, extra {r['cost']:+.2f}"
  )


if __name__ == "__main__":
  main()
