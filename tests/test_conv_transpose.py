"""conv_transpose against a scatter-add loop and jax.lax.conv_transpose; its output sizes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from references import IMPLS, LAX_DIMS, assert_close, random, rtol_for, with_vjp

import jaxconv as jc
from jaxconv import nn


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
      x,
      jnp.swapaxes(w, -1, -2),
      stride,
      padding,
      rhs_dilation=dilation,
      dimension_numbers=LAX_DIMS[rank],
      transpose_kernel=True,
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


# --------------------------------------------------------------------------------------------
# output_padding (PyTorch's): H_out = (H_in - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1


# (x spatial of the forward conv, kernel, stride, padding, dilation); op = (n + lo + hi - k_eff) % s per axis.
IDENTITY_CASES = {
  "1d-op-0": ((7,), (3,), (2,), [(1, 1)], (1,)),
  "1d-op-1": ((8,), (3,), (2,), [(1, 1)], (1,)),
  "1d-op-2-stride-3": ((12,), (2,), (3,), [(0, 1)], (1,)),
  "2d-mixed-op": ((9, 8), (3, 4), (3, 2), [(1, 2), (0, 1)], (1, 1)),
  "2d-valid-dilated": ((10, 7), (2, 3), (3, 2), "valid", (2, 1)),
  "2d-same-stride-gt-kernel": ((8, 11), (3, 1), (2, 4), "same", (1, 1)),
  "3d": ((5, 6, 4), (2, 3, 2), (2, 2, 3), [(0, 1), (1, 1), (0, 0)], (1, 1, 1)),
}
IDENTITY_CALLS = [(name, None) for name in IDENTITY_CASES] + [("2d-mixed-op", impl) for impl in IMPLS]


@pytest.mark.parametrize("name, impl", IDENTITY_CALLS)
def test_output_padding_gives_the_input_gradient_of_conv(name: str, impl: str | None, rng: np.random.Generator):
  """conv_transpose(g, w.swapaxes(-1, -2), stride=s, padding=p, output_padding=op) == the x-vjp of lax's conv."""
  spatial, kernel, stride, padding, dilation = IDENTITY_CASES[name]
  rank = len(spatial)
  extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
  pads = (
    lax.padtype_to_pads(spatial, extent, stride, "SAME")
    if padding == "same"
    else [(0, 0)] * rank
    if padding == "valid"
    else padding
  )
  op = tuple((n + lo + hi - e) % s for n, (lo, hi), e, s in zip(spatial, pads, extent, stride))
  assert any(op) == (name != "1d-op-0"), op  # the cases exercise op = 0 and op != 0
  x, w = random(rng, (2, *spatial, 3), (*kernel, 3, 2))
  conv = functools.partial(
    lax.conv_general_dilated,
    window_strides=stride,
    padding=[tuple(p) for p in pads],
    rhs_dilation=dilation,
    dimension_numbers=LAX_DIMS[rank],
    precision=lax.Precision.HIGHEST,
  )
  y, pullback = jax.vjp(lambda x: conv(x, w), x)
  (g,) = random(rng, y.shape)
  (dx_ref,) = pullback(g)
  transpose = functools.partial(
    jc.conv_transpose,
    stride=stride,
    padding=padding if padding != "same" else [tuple(p) for p in pads],
    dilation=dilation,
    output_padding=op,
    impl=impl,
  )
  try:
    dx = jax.jit(transpose)(g, np.swapaxes(w, -1, -2))
  except ValueError as e:  # a kernel may refuse the forward conv being transposed
    assert f"impl={impl!r}" in str(e)
    pytest.skip(str(e))
  assert_close(dx, dx_ref, rtol_for(impl), "dx")
  assert (
    jc.output_shape(
      y.shape[1:-1], kernel, transpose.keywords["padding"], stride, dilation, transpose=True, output_padding=op
    )
    == spatial
  )


def test_output_padding_beyond_the_stride_adds_zero_outputs(rng: np.random.Generator):
  """With dilation > stride, op may reach past the full result (0 <= op < max(s, d)): the extra outputs are zeros."""
  x, w = random(rng, (1, 4, 2), (3, 2, 1))
  y = jc.conv_transpose(x, w, dilation=3, output_padding=2)
  full = scatter_add(x, w, (1,), [(0, 0)], (3,), 1)
  assert y.shape == (1, 3 + 7 + 2, 1)
  assert_close(y, np.pad(full, ((0, 0), (0, 2), (0, 0))), rtol_for(None), "y")
  # with a high pad, op first gives back the cropped outputs
  assert_close(
    jc.conv_transpose(x, w, dilation=3, padding=[(1, 2)], output_padding=2), full[:, 1:], rtol_for(None), "cropped"
  )


@pytest.mark.parametrize(
  "n, k, stride, padding, dilation, output_padding, expected",
  [
    (7, 3, 2, 1, 1, 1, 14),  # (n - 1) s - 2 p + d (k - 1) + op + 1
    (5, 4, 3, [(2, 0)], 1, 2, 16),
    (5, 3, 1, "valid", 3, 2, 13),  # op < max(s, d) = 3
    (5, 3, 2, "same", 1, 1, 11),  # "same": n s + op
    (4, 2, 2, "full", 1, 1, 7),
  ],
)
def test_output_padding_sizes(n, k, stride, padding, dilation, output_padding, expected):
  x, w = jax.ShapeDtypeStruct((1, n, 1), np.float32), jax.ShapeDtypeStruct((k, 1, 1), np.float32)
  geometry = dict(stride=stride, padding=padding, dilation=dilation)
  assert jax.eval_shape(
    functools.partial(jc.conv_transpose, output_padding=output_padding, **geometry), x, w
  ).shape == (1, expected, 1)
  assert jc.output_shape(n, k, **geometry, transpose=True, output_padding=output_padding) == (expected,)
  layer = nn.ConvTranspose(1, 1, (k,), output_padding=output_padding, rngs=nnx.Rngs(0), **geometry)
  assert layer(jnp.ones((1, n, 1))).shape == (1, expected, 1)


X2, W2 = np.ones((1, 4, 4, 2), np.float32), np.ones((3, 3, 2, 1), np.float32)


@pytest.mark.parametrize(
  "call, exc",
  [
    (lambda: jc.conv_transpose(X2, W2, stride=2, output_padding=-1), ValueError),
    (lambda: jc.conv_transpose(X2, W2, stride=2, output_padding=2), ValueError),  # >= max(stride, dilation)
    (lambda: jc.conv_transpose(X2, W2, stride=(2, 1), output_padding=(1, 1)), ValueError),
    (lambda: jc.conv_transpose(X2, W2, stride=2, dilation=3, output_padding=3), ValueError),
    (lambda: jc.conv_transpose(X2, W2, stride=2, output_padding=(1, 1, 1)), ValueError),
    (lambda: jc.conv_transpose(X2, W2, stride=2, output_padding=0.5), TypeError),
    (lambda: jax.jit(functools.partial(jc.conv_transpose, stride=2, output_padding=2))(X2, W2), ValueError),
    (lambda: nn.ConvTranspose(2, 1, (3, 3), stride=2, output_padding=2, rngs=nnx.Rngs(0)), ValueError),
    (lambda: jc.output_shape(4, 3, stride=2, transpose=True, output_padding=2), ValueError),
    (lambda: jc.output_shape(4, 3, stride=2, output_padding=1), ValueError),  # only with transpose=True
  ],
)
def test_bad_output_padding_is_refused_naming_it(call, exc):
  with pytest.raises(exc, match="^output_padding"):
    call()
