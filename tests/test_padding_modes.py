"""padding_mode and "causal" padding of conv / correlate / convolve / nn.Conv against independent references.

The reference fills the pads with ``numpy.pad`` (modes constant/reflect/edge/wrap/symmetric), then
runs ``lax.conv_general_dilated`` unpadded. Under jax (for gradients) the fill is applied as the
linear map that ``numpy.pad`` builds from an identity matrix, one per axis, so neither values nor
gradients go through ``jnp.pad`` (which jaxconv uses). 2-D ``jc.convolve`` is also checked against
``scipy.signal.convolve2d(boundary="fill"/"wrap"/"symm", mode="same")``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from flax import nnx
from jax import lax
from references import IMPLS, LAX_DIMS, assert_close, per_axis, random, rtol_for, with_vjp

import jaxconv as jc
from jaxconv import nn

# padding_mode -> numpy.pad's mode (the contract's table, written out here independently).
NUMPY_MODES = {
  "zeros": "constant",
  "reflect": "reflect",
  "replicate": "edge",
  "circular": "wrap",
  "symmetric": "symmetric",
}
HIGHEST = lax.Precision.HIGHEST


def explicit_pads(padding, spatial, kernel, stride, dilation, convention: str) -> list[tuple[int, int]]:
  """Any padding form -> ``(lo, hi)`` per axis, by lax's and scipy's own rules (not jaxconv's)."""
  rank = len(spatial)
  extent = [d * (k - 1) + 1 for k, d in zip(kernel, per_axis(dilation, rank))]
  if padding == "full":
    return [(e - 1, e - 1) for e in extent]
  if padding == "causal":
    return [(e - 1, 0) for e in extent]
  if padding == "same" and convention == "lax":
    return [tuple(p) for p in lax.padtype_to_pads(spatial, extent, per_axis(stride, rank), "SAME")]
  if padding == "same":  # scipy: the centre n outputs of the "full" result, starting at (e - 1) // 2
    return [(e - 1 - (e - 1) // 2, (e - 1) // 2) for e in extent]
  return [(p, p) if isinstance(p, int) else tuple(p) for p in per_axis(padding, rank)]


def pad_matrix(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
  """The ``(n + lo + hi, n)`` linear map of ``numpy.pad`` on one axis: numpy.pad applied to the identity."""
  return np.pad(np.eye(n, dtype=np.float32), ((lo, hi), (0, 0)), mode=NUMPY_MODES[mode])


def numpy_pad_then_lax(pads, mode: str, stride, dilation):
  """The reference ``(x, w) -> y`` for channels-last x ``(N, *S, C)``.

  numpy.pad's fill (as matrices), then lax, unpadded.
  """

  def conv(x, w):
    rank = x.ndim - 2
    for axis, (lo, hi) in enumerate(pads):
      padded = jnp.tensordot(pad_matrix(x.shape[1 + axis], lo, hi, mode), x, axes=[[1], [1 + axis]], precision=HIGHEST)
      x = jnp.moveaxis(padded, 0, 1 + axis)
    return lax.conv_general_dilated(
      x,
      w,
      per_axis(stride, rank),
      "VALID",
      rhs_dilation=per_axis(dilation, rank),
      dimension_numbers=LAX_DIMS[rank],
      precision=HIGHEST,
    )

  return conv


def check_against_reference(rng, x_shape, w_shape, padding, mode, *, stride=1, dilation=1, impl=None):
  """jc.conv's values and vjp (w.r.t. x and w, under jit) equal numpy.pad + lax."""
  spatial, kernel = x_shape[1:-1], w_shape[:-2]
  pads = explicit_pads(padding, spatial, kernel, stride, dilation, "lax")
  ours = functools.partial(jc.conv, stride=stride, padding=padding, dilation=dilation, padding_mode=mode, impl=impl)
  ref = numpy_pad_then_lax(pads, mode, stride, dilation)
  x, w = random(rng, x_shape, w_shape)
  (ct,) = random(rng, jax.eval_shape(ref, x, w).shape)
  try:
    y, (dx, dw) = with_vjp(ours)(x, w, ct)
  except ValueError as e:  # a kernel may refuse the unpadded conv
    assert f"impl={impl!r}" in str(e), str(e)
    pytest.skip(str(e))
  y_ref, (dx_ref, dw_ref) = with_vjp(ref)(x, w, ct)
  tol = rtol_for(impl)
  assert_close(y, y_ref, tol, f"{mode} y")
  assert_close(dx, dx_ref, tol, f"{mode} dx")
  assert_close(dw, dw_ref, tol, f"{mode} dw")


def test_pad_matrices_are_numpy_pad():
  """The reference's fill is numpy.pad's, cell for cell, on every mode (2-D, asymmetric pads)."""
  x = np.arange(20, dtype=np.float32).reshape(4, 5)
  for mode, np_mode in NUMPY_MODES.items():
    filled = pad_matrix(4, 3, 1, mode) @ x @ pad_matrix(5, 2, 4, mode).T
    np.testing.assert_array_equal(filled, np.pad(x, ((3, 1), (2, 4)), mode=np_mode), err_msg=mode)


# Every impl on one 2-D geometry; each mode with another padding form.
MODE_FORMS = {"zeros": "same", "reflect": [(2, 1), (1, 2)], "replicate": "full", "circular": 2, "symmetric": (1, 3)}
# A filled mode reaches the kernel the same way whatever the mode (jnp.pad, then the unpadded conv),
# so each impl runs "zeros" (its own padding) and one filled mode, in turn: each filled mode still
# runs on two or more impls, and every mode x form x rank runs on the default impl below.
FILLED = [m for m in MODE_FORMS if m != "zeros"]
IMPL_MODES = [(impl, mode) for k, impl in enumerate(IMPLS) for mode in ("zeros", FILLED[k % len(FILLED)])]


# winograd's and depthwise's in the slow set (6 s together on a 2-core AVX2 EPYC).
@pytest.mark.parametrize(
  ("impl", "mode"),
  [
    pytest.param(i, m, marks=[pytest.mark.slow] if i in ("winograd", "depthwise") else [], id=f"{i}-{m}")
    for i, m in IMPL_MODES
  ],
)
def test_every_impl_zeros_and_a_filled_mode(impl: str, mode: str, rng: np.random.Generator):
  check_against_reference(rng, (2, 6, 5, 2), (3, 3, 2, 3), MODE_FORMS[mode], mode, impl=impl)


# The default kernel on each mode with three padding forms in turn (each form with three modes; the
# impl test above adds another form per mode), and 1-D / 3-D, strided and dilated cases.
FORMS = {"same": "same", "full": "full", "int": 1, "ints": (2, 1), "pairs": [(0, 2), (3, 1)]}
MODE_FORM_PAIRS = [
  (mode, list(FORMS.values())[(m + f) % len(FORMS)]) for m, mode in enumerate(NUMPY_MODES) for f in range(3)
]
CASES = [((1, 5, 6, 1), (3, 2, 1, 2), dict(padding=form), mode) for mode, form in MODE_FORM_PAIRS] + [
  ((2, 7, 2), (3, 2, 3), dict(padding="same", stride=2), "reflect"),
  ((1, 6, 1), (2, 1, 1), dict(padding="causal", dilation=3), "replicate"),
  ((1, 5, 2), (4, 2, 1), dict(padding=[(3, 5)]), "circular"),
  ((1, 5, 1), (3, 1, 1), dict(padding="full", dilation=2), "symmetric"),
  ((1, 4, 5, 3, 1), (3, 2, 2, 1, 2), dict(padding="same"), "reflect"),
  ((1, 4, 3, 5, 2), (2, 3, 2, 2, 1), dict(padding=[(1, 1), (3, 0), (2, 2)], stride=(1, 2, 2)), "circular"),
  ((1, 3, 4, 4, 1), (2, 2, 3, 1, 1), dict(padding="full", dilation=(1, 2, 1)), "symmetric"),
  ((1, 4, 4, 4, 1), (3, 3, 3, 1, 1), dict(padding=2), "replicate"),
]


@pytest.mark.parametrize(
  "x_shape, w_shape, geometry, mode", CASES, ids=[f"{len(c[0]) - 2}d-{c[3]}-{c[2]}" for c in CASES]
)
def test_modes_forms_and_ranks(x_shape, w_shape, geometry, mode, rng: np.random.Generator):
  check_against_reference(rng, x_shape, w_shape, geometry.pop("padding"), mode, **geometry)


@pytest.mark.parametrize("mode", list(NUMPY_MODES))
@pytest.mark.parametrize("padding", ["same", "full", [(2, 0), (1, 3)]])
def test_correlate_and_convolve_follow_scipy_convention(padding, mode: str, rng: np.random.Generator):
  """The signal-style functions resolve "same" as scipy (extra pad low for even kernels), then fill."""
  x, w = random(rng, (5, 6), (2, 3))
  pads = explicit_pads(padding, x.shape, w.shape, 1, 1, "scipy")
  xp = np.pad(x.astype(np.float64), pads, mode=NUMPY_MODES[mode])
  expected = scipy.signal.correlate(xp, w.astype(np.float64), mode="valid")
  assert_close(jc.correlate(x, w, padding, padding_mode=mode), expected, 1e-5, "correlate")
  assert_close(
    jc.convolve(x, w, padding, padding_mode=mode), scipy.signal.convolve(xp, w, mode="valid"), 1e-5, "convolve"
  )


@pytest.mark.parametrize("boundary, mode", [("fill", "zeros"), ("wrap", "circular"), ("symm", "symmetric")])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 4), (3, 2)])
def test_convolve_matches_scipy_convolve2d_boundaries(kernel, boundary: str, mode: str, rng: np.random.Generator):
  """2-D convolve with "same" equals scipy.signal.convolve2d(mode="same", boundary=...), even kernels included."""
  x, w = random(rng, (6, 7), kernel)
  expected = scipy.signal.convolve2d(x.astype(np.float64), w.astype(np.float64), mode="same", boundary=boundary)
  assert_close(jc.convolve(x, w, "same", padding_mode=mode), expected, 1e-5, boundary)


@pytest.mark.slow
def test_mode_gradients_pass_numerical_checks(rng: np.random.Generator):
  """check_grads through the fill of every mode (forward and reverse, two orders)."""
  from jax.test_util import check_grads

  x, w = (
    jnp.asarray(a, jnp.float64) if jax.config.jax_enable_x64 else jnp.asarray(a) for a in random(rng, (4, 5), (3, 2))
  )
  for mode in NUMPY_MODES:
    check_grads(
      lambda x, w, mode=mode: jc.correlate(x, w, "full", padding_mode=mode),
      (x, w),
      order=2,
      modes=("fwd", "rev"),
      eps=1e-2,
      atol=2e-2,
      rtol=2e-2,
    )


X1, X2, W1, W2 = (
  np.ones((1, 4, 1), np.float32),
  np.ones((1, 4, 5, 1), np.float32),
  np.ones((3, 1, 1), np.float32),
  np.ones((3, 3, 1, 1), np.float32),
)


@pytest.mark.parametrize(
  "mode, padding, ok",
  [
    ("reflect", 3, True),  # reflect needs pads < n = 4
    ("reflect", [(0, 4)], False),
    ("circular", [(4, 0)], True),  # circular and symmetric need pads <= n
    ("circular", 5, False),
    ("symmetric", [(1, 4)], True),
    ("symmetric", [(5, 0)], False),
    ("replicate", 9, True),  # replicate and zeros fill any width
    ("zeros", 9, True),
  ],
)
def test_pads_a_mode_cannot_fill_are_refused(mode: str, padding, ok: bool):
  conv = functools.partial(jc.conv, padding=padding, padding_mode=mode)
  correlate = functools.partial(jc.correlate, padding=padding, padding_mode=mode)
  if ok:
    ((lo, hi),) = explicit_pads(padding, (4,), (3,), 1, 1, "lax")
    assert jax.jit(conv)(X1, W1).shape == (1, 4 + lo + hi - 2, 1)
    return
  for fn, args in ((conv, (X1, W1)), (jax.jit(conv), (X1, W1)), (correlate, (X1[0, :, 0], W1[:, 0, 0]))):
    with pytest.raises(ValueError, match=r"^padding\b.*size 4"):  # names the argument and the limit
      fn(*args)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: jc.conv(X2, W2, padding="same", padding_mode="mirror"), "^padding_mode"),
    (lambda: jc.correlate(X2[0, ..., 0], W2[..., 0, 0], padding_mode="zero"), "^padding_mode"),
    (lambda: jc.convolve(X2[0, ..., 0], W2[..., 0, 0], padding_mode=None), "^padding_mode"),
    (lambda: jc.conv(X2, W2, padding="causal"), "^padding"),  # causal: one spatial axis only
    (lambda: jc.correlate(X2[0, ..., 0], W2[..., 0, 0], padding="causal"), "^padding"),
    (lambda: jc.conv_transpose(X2, W2, padding_mode="reflect"), "^padding_mode"),
    (lambda: nn.Conv(1, 1, (3, 3), padding_mode="wrap", rngs=nnx.Rngs(0)), "^padding_mode"),
  ],
)
def test_bad_modes_are_refused_naming_the_argument(call, match: str):
  with pytest.raises(ValueError, match=match):
    call()


def test_causal_padding_keeps_the_length_and_looks_back_only(rng: np.random.Generator):
  """causal = (k_eff - 1, 0): output t depends on inputs <= t only, for conv and correlate."""
  (x,) = random(rng, (1, 9, 1))
  w = np.ones((3, 1, 1), np.float32)
  y = jc.conv(x, w, padding="causal", dilation=2)
  assert y.shape == x.shape
  expected = [sum(x[0, t - 2 * m, 0] for m in range(3) if t - 2 * m >= 0) for t in range(9)]
  assert_close(y[0, :, 0], expected, 1e-6, "causal")
  assert_close(jc.correlate(x[0, :, 0], w[:, 0, 0], "causal", dilation=2), expected, 1e-6, "correlate causal")
  assert jc.output_shape(9, 3, "causal", dilation=2) == (9,)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_nn_conv_padding_mode(mode: str, rng: np.random.Generator):
  layer = nn.Conv(2, 3, (3, 3), padding="same", padding_mode=mode, impl="lax", rngs=nnx.Rngs(0))
  assert layer.padding_mode == mode
  (x,) = random(rng, (2, 5, 6, 2))
  expected = numpy_pad_then_lax([(1, 1), (1, 1)], mode, 1, 1)(x, np.asarray(layer.kernel[...])) + np.asarray(
    layer.bias[...]
  )
  assert_close(layer(x), expected, 1e-5, mode)
