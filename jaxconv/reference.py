"""Naive loop convolution, correlation and pooling, written the way the textbooks write them.

Slow on purpose: every output element is one explicit sum (or max, or mean) over one window of
the zero-padded input, so each function reads like its formula. They are the teaching reference
that the fast kernels are compared with; they work on NumPy float64 arrays, not under ``jit``.

Padding ``p`` takes every form :func:`jaxconv.geometry.resolve_padding` takes: an int (both
sides), per-axis ints, ``(lo, hi)`` pairs, or ``"valid"``/``"same"``/``"full"``. The loops find
the output length by sliding the window while it fits, never from the output-size formula, so
they can be used to check that formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from jaxconv._checks import normalize_ints
from jaxconv.geometry import Convention, Padding, resolve_window

PoolMode = Literal["max", "avg"]


def pad(
  x: np.ndarray,
  padding: Padding,
  kernel: Sequence[int],
  stride: int | Sequence[int] = 1,
  *,
  value: float = 0.0,
  convention: Convention = "scipy",
) -> np.ndarray:
  """x ``(*spatial)`` padded with ``value`` as ``padding`` prescribes for a ``kernel``-sized window."""
  x = np.asarray(x, np.float64)
  window = resolve_window(x.shape, tuple(kernel), padding, stride, convention=convention)
  return np.pad(x, window.padding, constant_values=value)


def window_starts(padded: int, k: int, s: int) -> range:
  """Where a ``k``-wide window starts on a padded axis of length ``padded``: every ``s``-th place it fits."""
  return range(0, padded - k + 1, s)


def correlate1d(x: np.ndarray, w: np.ndarray, padding: Padding = 0, stride: int = 1) -> np.ndarray:
  """Cross-correlation ``y[i] = sum_a xp[i*s + a] * w[a]`` of x ``(n,)`` and w ``(m,)``."""
  w = np.asarray(w, np.float64)
  (m,) = w.shape
  xp = pad(x, padding, w.shape, stride)
  starts = window_starts(len(xp), m, stride)
  y = np.zeros(len(starts))
  for i, start in enumerate(starts):
    for a in range(m):
      y[i] += xp[start + a] * w[a]
  return y


def correlate2d(x: np.ndarray, w: np.ndarray, padding: Padding = 0, stride: int | Sequence[int] = 1) -> np.ndarray:
  """Cross-correlation ``y[i, j] = sum_ab xp[i*s_h + a, j*s_w + b] * w[a, b]`` of x ``(H, W)``, w ``(kh, kw)``."""
  w = np.asarray(w, np.float64)
  kh, kw = w.shape
  sh, sw = normalize_ints(stride, 2, "stride")
  xp = pad(x, padding, w.shape, (sh, sw))
  rows, cols = window_starts(xp.shape[0], kh, sh), window_starts(xp.shape[1], kw, sw)
  y = np.zeros((len(rows), len(cols)))
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      for a in range(kh):
        for b in range(kw):
          y[i, j] += xp[r + a, c + b] * w[a, b]
  return y


def convolve1d(x: np.ndarray, w: np.ndarray, padding: Padding = 0, stride: int = 1) -> np.ndarray:
  """Convolution ``y[i] = sum_a xp[i*s + a] * w[m-1-a]`` of x ``(n,)`` and w ``(m,)``: the kernel reversed."""
  return correlate1d(x, np.flip(np.asarray(w, np.float64)), padding, stride)


def convolve2d(x: np.ndarray, w: np.ndarray, padding: Padding = 0, stride: int | Sequence[int] = 1) -> np.ndarray:
  """Convolution of x ``(H, W)`` and w ``(kh, kw)``: the correlation with the kernel flipped on both axes."""
  return correlate2d(x, np.flip(np.asarray(w, np.float64)), padding, stride)


def correlate2d_channels(
  x: np.ndarray, w: np.ndarray, padding: Padding = 0, stride: int | Sequence[int] = 1
) -> np.ndarray:
  """Multi-channel correlation of x ``(H, W, C_in)`` and w ``(kh, kw, C_in, C_out)`` -> ``(H', W', C_out)``.

  Output channel ``o`` is the sum over input channels ``c`` of ``correlate2d(x[..., c], w[..., c, o])``.
  """
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  if x.ndim != 3 or w.ndim != 4 or w.shape[2] != x.shape[2]:
    raise ValueError(
      f"x must be (H, W, C_in) and w (kh, kw, C_in, C_out) with the same C_in; got x {x.shape}, w {w.shape}"
    )
  outputs = [
    sum(correlate2d(x[..., c], w[..., c, o], padding, stride) for c in range(x.shape[2])) for o in range(w.shape[3])
  ]
  return np.stack(outputs, axis=-1)


def pool2d(
  x: np.ndarray,
  window: int | Sequence[int],
  stride: int | Sequence[int] | None = None,
  padding: Padding = 0,
  mode: PoolMode = "max",
) -> np.ndarray:
  """Max or mean of every window of x ``(H, W)``; pads count as -inf (max) or 0 (avg); stride defaults to the window.

  String paddings follow ``jc.max_pool``/``jc.avg_pool`` (lax's ``"same"``).
  """
  if mode not in ("max", "avg"):
    raise ValueError(f"mode must be 'max' or 'avg'; got {mode!r}")
  kh, kw = normalize_ints(window, 2, "window")
  sh, sw = (kh, kw) if stride is None else normalize_ints(stride, 2, "stride")
  fill, reduce = (-np.inf, np.max) if mode == "max" else (0.0, np.mean)
  xp = pad(x, padding, (kh, kw), (sh, sw), value=fill, convention="lax")
  rows, cols = window_starts(xp.shape[0], kh, sh), window_starts(xp.shape[1], kw, sw)
  y = np.zeros((len(rows), len(cols)))
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      y[i, j] = reduce(xp[r : r + kh, c : c + kw])
  return y


def input_usage(
  shape: Sequence[int], kernel: Sequence[int], padding: Padding = 0, stride: int | Sequence[int] = 1
) -> np.ndarray:
  """How many windows cover each input cell, shape ``shape`` (1-D or 2-D): where boundary cells count less."""
  shape, kernel = tuple(shape), tuple(kernel)
  window = resolve_window(shape, kernel, padding, stride, convention="scipy")
  pairs = window.padding
  counts = pad(np.zeros(shape), pairs, kernel)
  starts = [window_starts(n, k, s) for n, k, s in zip(counts.shape, kernel, window.stride)]
  for corner in np.ndindex(*(len(r) for r in starts)):
    counts[tuple(slice(r[i], r[i] + k) for r, i, k in zip(starts, corner, kernel))] += 1
  # Uses of the padding cells do not count: crop back to the input.
  return counts[tuple(slice(lo, lo + n) for (lo, _), n in zip(pairs, shape))]


__all__ = [
  "convolve1d",
  "convolve2d",
  "correlate1d",
  "correlate2d",
  "correlate2d_channels",
  "input_usage",
  "pad",
  "pool2d",
  "window_starts",
]
