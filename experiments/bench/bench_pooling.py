"""Pooling speed under jit: each pooling path against reduce_window; taps vs blocks for non-overlapping windows.

  python experiments/bench/bench_pooling.py [--batch 128] [--size 28] [--channels 6] [--repeats 20] [--taps]

First table, forward + gradient, each path's time as a ratio to lax.reduce_window's: the
non-overlapping path (stride == window, with and without ceil_mode's overhang), the strided-block
path of dilated max pooling (lax.reduce_window cannot differentiate dilated max windows, so its
row compares with the undilated window of the same extent), and the adaptive pools (uneven cells:
index gathers; even cells: the non-overlapping path). Ratios < 1 mean jaxconv's path is faster.

Second table (``--taps``, the default): non-overlapping windows reduced over their taps (``lax.split``
of the tiles, ``pooling._taps_max`` / ``_taps_sum``) against the block reduction (a reshape into
``(N, o_1, k_1, ..., C)`` and ``jnp.max`` / ``jnp.sum`` over the window axes, ``pooling._reduce_blocks``),
on LeNet's shapes and others, alone, after a ReLU and before one: forward, and forward + backward
(the output and the input gradient for a random cotangent). ``jaxconv`` says which of the two
``max_pool`` / ``avg_pool`` use (``pooling._SPLIT_MAX_TAPS`` and ``_SPLIT_SUM_TAPS``).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

import jaxconv as jc
from jaxconv import pooling

flags.DEFINE_integer("batch", 128, "Images per batch.")
flags.DEFINE_integer("size", 28, "Height and width of the (square) input.")
flags.DEFINE_integer("channels", 6, "Channels of the input.")
flags.DEFINE_integer("repeats", 20, "Timed calls per row (after one warm-up call).")
flags.DEFINE_boolean("taps", True, "Also time the taps reduction of non-overlapping windows against the block one.")
FLAGS = flags.FLAGS


def median_time(step, *args) -> float:
  """Median wall time of a jitted ``step(*args)`` over ``--repeats`` calls, after one warm-up call."""
  jax.block_until_ready(step(*args))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def seconds(fn, x) -> float:
  """Median wall time of ``value_and_grad(sum(fn(x)))`` under jit."""
  return median_time(jax.jit(jax.value_and_grad(lambda x: fn(x).sum())), x)


# (x shape, window) of the second table: LeNet's two pools, a wide layer, 1-D and 3-D, a
# non-square window, and the larger windows that set the thresholds.
TAPS_CASES = (
  ((128, 28, 28, 6), (2, 2)),
  ((128, 10, 10, 16), (2, 2)),
  ((32, 56, 56, 64), (2, 2)),
  ((128, 28, 27, 6), (2, 3)),
  ((128, 1024, 8), (2,)),
  ((128, 1024, 8), (4,)),
  ((8, 16, 16, 16, 8), (2, 2, 2)),
  ((128, 27, 27, 6), (3, 3)),
  ((32, 54, 54, 64), (3, 3)),
  ((32, 56, 56, 16), (4, 4)),
  ((32, 56, 56, 16), (7, 7)),
)


def taps_reduction(op, window: tuple[int, ...]):
  """Tiles ``(N, o_1 k_1, ..., C)`` -> ``(N, *o, C)`` reduced over their taps, whatever the window."""
  if op is lax.max:
    return lambda x: pooling._taps_max(x, window)
  return lambda x: pooling._taps_sum(x, window)


def block_reduction(op, window: tuple[int, ...]):
  """The same reduction over the blocks ``(N, o_1, k_1, ..., o_r, k_r, C)``."""
  return lambda x: pooling._reduce_blocks(x.reshape(pooling._blocks_shape(x, window)), op, len(window))


def forward_and_backward(f, x: jax.Array) -> tuple[float, float]:
  """Median ms of f under jit, and of f's output with the input gradient for a random cotangent."""
  ct = jax.random.normal(jax.random.key(1), jax.eval_shape(f, x).shape, x.dtype)

  def both(x, ct):
    y, vjp = jax.vjp(f, x)
    return y, vjp(ct)[0]

  return 1e3 * median_time(jax.jit(f), x), 1e3 * median_time(jax.jit(both), x, ct)


def taps_table() -> None:
  """Print the second table: taps vs blocks, forward and forward + backward, ms."""
  print(f"\nnon-overlapping windows, taps vs blocks: ms forward / forward+backward, median of {FLAGS.repeats}")
  print(f"{'x':20s} {'window':10s} {'op':4s} {'around':10s} {'blocks':>13s} {'taps':>13s} {'bwd ratio':>9s}  jaxconv")
  around = {
    "": lambda f: f,
    "relu>pool": lambda f: lambda x: f(jax.nn.relu(x)),
    "pool>relu": lambda f: lambda x: jax.nn.relu(f(x)),
  }
  for shape, window in TAPS_CASES:
    cropped = tuple(n // k * k for n, k in zip(shape[1:-1], window))
    x = jax.random.normal(jax.random.key(0), (shape[0], *cropped, shape[-1]))
    for op, name, limit in ((lax.max, "max", pooling._SPLIT_MAX_TAPS), (lax.add, "sum", pooling._SPLIT_SUM_TAPS)):
      chosen = "taps" if np.prod(window) <= limit else "blocks"
      for where, wrap in around.items():
        (bf, bb), (tf, tb) = (forward_and_backward(wrap(r(op, window)), x) for r in (block_reduction, taps_reduction))
        print(
          f"{str(shape):20s} {str(window):10s} {name:4s} {where:10s} {bf:6.3f}/{bb:6.3f} {tf:6.3f}/{tb:6.3f}"
          f" {tb / bb:9.2f}  {chosen}",
          flush=True,
        )


def reduce_window_max(window: int, stride: int, pads) -> callable:
  """The baseline: lax.reduce_window max with explicit pads (ceil_mode's overhang as extra high pads)."""
  return lambda x: lax.reduce_window(
    x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), ((0, 0), pads, pads, (0, 0))
  )


def main(argv: list[str]) -> None:
  del argv
  n = FLAGS.size
  x = jnp.asarray(np.random.default_rng(0).standard_normal((FLAGS.batch, n, n, FLAGS.channels)), jnp.float32)
  overhang = (-(n - 2) // -2) * 2 + 2 - n  # extra high pad that ceil_mode adds for a 2x2 window at stride 2
  uneven = max(n // 3 + 1, 2)
  rows = [
    ("max 2x2 stride 2 (taps)", lambda x: jc.max_pool(x, 2), reduce_window_max(2, 2, (0, 0))),
    (
      "max 2x2 stride 2 ceil_mode (taps)",
      lambda x: jc.max_pool(x, 2, ceil_mode=True),
      reduce_window_max(2, 2, (0, overhang)),
    ),
    ("max 3x3 stride 2 (reduce_window)", lambda x: jc.max_pool(x, 3, 2), reduce_window_max(3, 2, (0, 0))),
    (
      "max 3x3 dilation 2 stride 2 (blocks) vs 5x5",
      lambda x: jc.max_pool(x, 3, 2, dilation=2),
      reduce_window_max(5, 2, (0, 0)),
    ),
    (
      f"adaptive max {uneven}x{uneven} (gathers) vs 3x3 stride 3",
      lambda x: jc.adaptive_max_pool(x, uneven),
      reduce_window_max(3, 3, (0, 0)),
    ),
    (
      "adaptive avg 1x1 (blocks) vs mean",
      lambda x: jc.adaptive_avg_pool(x, 1),
      lambda x: jnp.mean(x, axis=(1, 2), keepdims=True),
    ),
  ]
  print(f"x {tuple(x.shape)}, value_and_grad under jit, median of {FLAGS.repeats}")
  print(f"{'path':52s} {'jaxconv ms':>11s} {'baseline ms':>12s} {'ratio':>6s}")
  for name, ours, baseline in rows:
    a, b = seconds(ours, x), seconds(baseline, x)
    print(f"{name:52s} {a * 1e3:11.3f} {b * 1e3:12.3f} {a / b:6.2f}")
  if FLAGS.taps:
    taps_table()


if __name__ == "__main__":
  app.run(main)
