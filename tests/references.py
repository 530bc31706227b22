"""Shared helpers of the core tests: the impls under test, tolerances, independent references."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

import jaxconv as jc
from jaxconv import kernels
from jaxconv.geometry import conv_geometry

# Read at collection time, so every kernel registered by ``import jaxconv`` is tested. "tuned" runs one
# of them, chosen by timing every kernel on each new geometry: tests/test_tuned.py covers it.
IMPLS: tuple[str, ...] = tuple(impl for impl in jc.available_impls() if impl != "tuned")

# Relative float32 tolerance per impl: max |error| / max |reference|. Transform-based kernels
# (FFT, Winograd) round more; "auto" may dispatch to them. Unknown impls get the default.
RTOL: dict[str, float] = {"fft": 1e-4, "winograd": 1e-4, "auto": 1e-4}
DEFAULT_RTOL = 1e-5

# lax's own layout strings per spatial rank, independent of jaxconv.kernels.lax.dimension_numbers.
LAX_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def rtol_for(impl: str | None) -> float:
  """The relative tolerance that ``impl``'s float32 results are held to."""
  return RTOL.get(impl, DEFAULT_RTOL)


def assert_close(actual, expected, rtol: float, what: str = "") -> None:
  """Assert equal shapes and ``max |actual - expected| <= rtol * max(|expected|, 1)``."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != reference {expected.shape}"
  scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
  err = float(np.max(np.abs(actual - expected), initial=0.0))
  assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g}"


def refusal(
  impl: str, x_shape: Sequence[int], w_shape: Sequence[int], *, convention: str = "lax", dtype=np.float32, **geometry
) -> str | None:
  """Why ``impl`` refuses a conv of x ``(N, *S, C_in)`` with w ``(*K, C_in // g, C_out)``, or None.

  The conv is float32 unless ``dtype``.
  """
  geometry = {"stride": 1, "padding": "valid", "dilation": 1, "groups": 1, **geometry}
  g = conv_geometry(x_shape, w_shape, dtype, convention=convention, **geometry)  # type: ignore[arg-type]
  try:
    kernels.resolve(impl, g)
  except ValueError as e:
    return str(e)
  return None


def per_axis(value: int | Sequence[int], rank: int) -> tuple[int, ...]:
  """An int for every axis, or one int per axis, as a ``rank``-tuple."""
  return (value,) * rank if isinstance(value, int) else tuple(value)


def explicit_pairs(padding: int | Sequence, rank: int) -> list[tuple[int, int]]:
  """An int, one int per axis, or ``(lo, hi)`` pairs -> one ``(lo, hi)`` pair per axis."""
  return [(p, p) if isinstance(p, int) else tuple(p) for p in per_axis(padding, rank)]


def with_vjp(f):
  """``(*args, ct) -> (f(*args), cotangents of args)`` for the output cotangent ``ct``, jit-compiled."""

  def run(*args_and_ct):
    *args, ct = args_and_ct
    y, pullback = jax.vjp(f, *args)
    return y, pullback(ct)

  return jax.jit(run)


def dilate_kernel(w: np.ndarray, dilation: int | Sequence[int]) -> np.ndarray:
  """``w`` with ``d - 1`` zeros inserted between neighbouring taps on every axis."""
  dilation = per_axis(dilation, w.ndim)
  out = np.zeros([d * (k - 1) + 1 for k, d in zip(w.shape, dilation)], w.dtype)
  out[tuple(slice(None, None, d) for d in dilation)] = w
  return out


def random(rng: np.random.Generator, *shapes: Sequence[int]) -> list[np.ndarray]:
  """Standard-normal float32 arrays of the given shapes."""
  return [rng.standard_normal(tuple(s)).astype(np.float32) for s in shapes]
