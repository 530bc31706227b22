"""conv_transpose against a scatter-add loop and jax.lax.conv_transpose; its output sizes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv as jc
from references import IMPLS, LAX_DIMS, assert_close, random, rtol_for, with_vjp


def scatter_add(x: np.ndarray, w: np.ndarray, stride, pads, dilation, groups: int) -> np.ndarray:
  """Each input cell adds itself times the kernel at its strided, dilated place; then crop the pads.

  x ``(N, *S, C_in)``, w ``(*K, C_in // groups, C_out)``, explicit ``pads`` -> ``(N, *out, C_out)``.
  """
  n, *spatial, c_in = x.shape
  *kernel, _, c_out = w.shape
  gi, go = c_in // groups, c_out // groups
  full = [(m - 1) * s + d * (k - 1) + 1 for m, k, s, d in zip(spatial, kernel, stride, dilation)]
  y = np.zeros((n, *full, c_out))
  for pos in np.ndindex(*spatial):
    for tap in np.ndindex(*kernel):
      at = tuple(p * s + t * d for p, t, s, d in zip(pos, tap, stride, dilation))
      for g in range(groups):
        xs = x[(slice(None), *pos, slice(g * gi, (g + 1) * gi))]
        y[(slice(None), *at, slice(g * go, (g + 1) * go))] += xs @ w[(*tap, slice(None), slice(g * go, (g + 1) * go))]
  return y[(slice(None), *(slice(lo, f - hi) for f, (lo, hi) in zip(full, pads)), slice(None))]


# (x shape, w shape, stride, padding, dilation, groups, the padding as explicit pairs)
LOOP_CASES = {
    "1d-grouped": ((2, 5, 4), (3, 2, 6), (2,), [(1, 0)], (1,), 2, [(1, 0)]),
    "2d-valid-dilated": ((1, 4, 3, 2), (3, 2, 2, 3), (2, 3), "valid", (1, 2), 1, [(0, 0), (0, 0)]),
    "2d-upsample-x2": ((2, 3, 4, 2), (4, 4, 2, 1), (2, 2), 1, (1, 1), 1, [(1, 1), (1, 1)]),
    "2d-full": ((1, 5, 6, 1), (2, 3, 1, 2), (1, 1), "full", (1, 1), 1, [(1, 1), (2, 2)]),
    "3d-grouped": ((1, 2, 3, 2, 4), (2, 2, 1, 2, 4), (2, 1, 2), "valid", (1, 1, 1), 2, [(0, 0)] * 3),
}


@pytest.mark.parametrize("name", LOOP_CASES)
def test_matches_scatter_add_loop(name: str, rng: np.random.Generator):
  """Values (with bias) equal the scatter-add definition, groups and dilation included."""
  x_shape, w_shape, stride, padding, dilation, groups, pads = LOOP_CASES[name]
  x, w, b = random(rng, x_shape, w_shape, w_shape[-1:])
  y = jc.conv_transpose(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
  assert_close(y, scatter_add(x, w, stride, pads, dilation, groups) + b, rtol_for(None), name)


def lax_transpose(stride, padding, dilation):
  """The reference ``(x, w) -> y``: lax.conv_transpose of the conv whose kernel is w with in/out swapped."""
  rank = len(stride)

  def transpose(x, w):
    return lax.conv_transpose(
        x, jnp.swapaxes(w, -1, -2), stride, padding,
        rhs_dilation=dilation, dimension_numbers=LAX_DIMS[rank], transpose_kernel=True,
        precision=lax.Precision.HIGHEST,
    )

  return transpose


# (x shape, w shape, stride, jc padding, dilation, lax.conv_transpose padding): lax's "SAME" is
# ours; its "VALID" is ours while stride <= kernel; explicit (lo, hi) is lax's (k_eff-1-lo, k_eff-1-hi).
LAX_CASES = {
    "same-3x3": ((2, 5, 4, 2), (3, 3, 2, 2), (1, 1), "same", (1, 1), "SAME"),
    "same-odd-strided": ((2, 5, 4, 3), (3, 3, 3, 2), (2, 2), "same", (1, 1), "SAME"),
    "same-even-stride-gt-kernel": ((1, 4, 5, 2), (4, 2, 2, 3), (2, 3), "same", (1, 1), "SAME"),
    "valid": ((2, 4, 4, 2), (3, 2, 2, 2), (2, 2), "valid", (1, 1), "VALID"),
    "explicit-dilated": ((1, 5, 4, 2), (3, 3, 2, 2), (2, 1), [(1, 2), (0, 3)], (2, 2), [(3, 2), (4, 1)]),
}


# Every kernel on one case (its gradient w.r.t. w differentiates the kernel's own vjp); the
# default kernel on all: conv_transpose's geometry is resolved before any kernel runs.
LAX_CALLS = [(name, None) for name in LAX_CASES] + [("same-3x3", impl) for impl in IMPLS]


@pytest.mark.parametrize("name, impl", LAX_CALLS)
def test_matches_lax_conv_transpose(name: str, impl: str | None, rng: np.random.Generator):
  """Values and gradients under jit equal lax.conv_transpose(..., transpose_kernel=True)."""
  x_shape, w_shape, stride, padding, dilation, lax_pad = LAX_CASES[name]
  x, w = random(rng, x_shape, w_shape)
  ours = functools.partial(jc.conv_transpose, stride=stride, padding=padding, dilation=dilation, impl=impl)
  ref = lax_transpose(stride, lax_pad, dilation)
  (ct,) = random(rng, jax.eval_shape(ref, x, w).shape)
  try:
    y, (dx, dw) = with_vjp(ours)(x, w, ct)
  except ValueError as e:  # a kernel may refuse the forward conv being transposed
    assert f"impl={impl!r}" in str(e)
    pytest.skip(str(e))
  y_ref, (dx_ref, dw_ref) = with_vjp(ref)(x, w, ct)
  tol = rtol_for(impl)
  assert_close(y, y_ref, tol, "y")
  assert_close(dx, dx_ref, tol, "dx")
  assert_close(dw, dw_ref, tol, "dw")


@pytest.mark.parametrize(
    "n, k, stride, padding, dilation, expected",
    [
        (5, 3, 1, "valid", 1, 7),  # (n - 1) s + d (k - 1) + 1 - lo - hi
        (5, 3, 2, "valid", 1, 11),
        (5, 3, 2, "valid", 2, 13),
        (5, 4, 2, 1, 1, 10),  # the classic 2x upsampling: k = 4, s = 2, pad 1
        (5, 4, 3, [(2, 0)], 1, 14),
        (5, 3, 1, "full", 1, 3),
        (5, 3, 2, "same", 1, 10),  # "same": n * s
        (5, 2, 3, "same", 2, 15),
    ],
)
def test_output_size(n: int, k: int, stride: int, padding, dilation: int, expected: int):
  """The transposed size, and the forward conv of the same geometry maps it back to n."""
  x = jax.ShapeDtypeStruct((1, n, 1), np.float32)
  w = jax.ShapeDtypeStruct((k, 1, 1), np.float32)
  geometry = dict(stride=stride, padding=padding, dilation=dilation)
  assert jax.eval_shape(functools.partial(jc.conv_transpose, **geometry), x, w).shape == (1, expected, 1)
  assert jc.output_shape((expected,), (k,), **geometry) == (n,)
