"""Pooling speed under jit, forward + gradient: each pooling path's time as a ratio to lax.reduce_window's.

  python experiments/bench/bench_pooling.py [--batch 128] [--size 28] [--channels 6] [--repeats 20]

Rows: the reshape path (stride == window, with and without ceil_mode's overhang), the strided-block
path of dilated max pooling (lax.reduce_window cannot differentiate dilated max windows, so its
row compares with the undilated window of the same extent), and the adaptive pools (uneven cells:
index gathers; even cells: the reshape path). Ratios < 1 mean jaxconv's path is faster.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

import jaxconv as jc

flags.DEFINE_integer("batch", 128, "Images per batch.")
flags.DEFINE_integer("size", 28, "Height and width of the (square) input.")
flags.DEFINE_integer("channels", 6, "Channels of the input.")
flags.DEFINE_integer("repeats", 20, "Timed calls per row (after one warm-up call).")
FLAGS = flags.FLAGS


def seconds(fn, x) -> float:
  """Median wall time of ``value_and_grad(sum(fn(x)))`` under jit."""
  step = jax.jit(jax.value_and_grad(lambda x: fn(x).sum()))
  jax.block_until_ready(step(x))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(x))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


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
    ("max 2x2 stride 2 (reshape)", lambda x: jc.max_pool(x, 2), reduce_window_max(2, 2, (0, 0))),
    (
      "max 2x2 stride 2 ceil_mode (reshape)",
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
      "adaptive avg 1x1 (reshape) vs mean",
      lambda x: jc.adaptive_avg_pool(x, 1),
      lambda x: jnp.mean(x, axis=(1, 2), keepdims=True),
    ),
  ]
  print(f"x {tuple(x.shape)}, value_and_grad under jit, median of {FLAGS.repeats}")
  print(f"{'path':52s} {'jaxconv ms':>11s} {'baseline ms':>12s} {'ratio':>6s}")
  for name, ours, baseline in rows:
    a, b = seconds(ours, x), seconds(baseline, x)
    print(f"{name:52s} {a * 1e3:11.3f} {b * 1e3:12.3f} {a / b:6.2f}")


if __name__ == "__main__":
  app.run(main)
