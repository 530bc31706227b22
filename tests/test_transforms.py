"""Every kernel under every JAX transform, against the same transform of ``lax.conv_general_dilated``.

The grid is impl (every name of ``jc.available_impls()``) x function (``conv``, ``conv_transpose``,
``correlate``, ``convolve``) x transform (for conv: eager, jit, grad of order 1 and 2, vjp, jvp,
jacfwd, jacrev, hessian, vmap over x / w / both, per-example gradients, grad of vmap,
linear_transpose; a subset for the others, see ``GRID``; the costly ones on a fixed subset of impls, see
``COSTLY_SUBSET``), plus ``jax.test_util.check_grads`` of
order 2 in both modes, zero-size inputs, and the registry's non-finite ``local`` flag. The references call
``lax.conv_general_dilated`` directly (not ``impl="lax"``, which goes through jaxconv's primitives
too), so the mechanism itself is under test for every kernel, lax's included.

Each impl runs on the first geometry it serves among a strided/dilated/grouped one and a plain
3x3 stride-1 one (Winograd serves only the latter), checked with ``kernels.resolve``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jaxconv as jc
from jaxconv import kernels, ops
from jaxconv.geometry import ConvGeometry

IMPLS = tuple(impl for impl in jc.available_impls() if impl != "tuned")  # tuned: tests/test_tuned.py
DIMS = ("NHWC", "HWIO", "NHWC")
Fn = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------------------------
# references: lax.conv_general_dilated called directly


def _lax_conv(x, w, *, stride=1, padding="valid", dilation=1, groups=1):
  pad = padding.upper() if isinstance(padding, str) else [(padding, padding)] * 2
  return lax.conv_general_dilated(
    x, w, _pair(stride), pad, rhs_dilation=_pair(dilation), dimension_numbers=DIMS, feature_group_count=groups
  )


def _lax_conv_transpose(x, w, *, stride=1, padding=0, dilation=1, groups=1, output_padding=0):
  """The transpose of a conv with int pads: x dilated by the stride, correlated with the flipped kernel."""
  pads = [(d * (k - 1) - padding, d * (k - 1) - padding + output_padding) for k, d in zip(w.shape[:2], _pair(dilation))]
  return lax.conv_general_dilated(
    x,
    jnp.flip(w, (0, 1)),
    (1, 1),
    pads,
    lhs_dilation=_pair(stride),
    rhs_dilation=_pair(dilation),
    dimension_numbers=DIMS,
    feature_group_count=groups,
  )


def _lax_correlate(x, w, *, padding="valid", stride=1, dilation=1):
  """scipy's mode strings: "same" keeps the centre of "full" (extra pad on the low side); any rank."""
  rank = w.ndim
  extents = [dilation * (k - 1) + 1 for k in w.shape]
  pads = {
    "valid": [(0, 0)] * rank,
    "full": [(e - 1, e - 1) for e in extents],
    "same": [(e // 2, (e - 1) // 2) for e in extents],
  }
  spatial = "DHW"[3 - rank :]
  y = lax.conv_general_dilated(
    x[None, ..., None],
    w[..., None, None],
    (stride,) * rank,
    pads[padding],
    rhs_dilation=(dilation,) * rank,
    dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
  )
  return y[0, ..., 0]


def _lax_convolve(x, w, **kwargs):
  return _lax_correlate(x, jnp.flip(w), **kwargs)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------------------------
# the functions under test, each with operands, candidate geometries and its reference


@dataclasses.dataclass(frozen=True)
class Function:
  name: str
  call: Callable  # jc.conv etc.
  reference: Callable  # the lax reference, same keywords
  x_shape: tuple[int, ...]
  w_shape: tuple[int, ...]
  candidates: tuple[dict, ...]  # keyword sets, richest first
  geometry: Callable[[tuple, tuple, dict], ConvGeometry]


def _conv_geometry(x_shape, w_shape, kw) -> ConvGeometry:
  x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)
  return ops.geometry_of(
    x,
    w,
    stride=kw.get("stride", 1),
    padding=kw.get("padding", "valid"),
    dilation=kw.get("dilation", 1),
    groups=kw.get("groups", 1),
  )


def _transpose_geometry(x_shape, w_shape, kw) -> ConvGeometry:
  x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)
  kw = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0, **kw}
  return ops.transpose_geometry(x, w, **kw)[0]


def _signal_geometry(x_shape, w_shape, kw) -> ConvGeometry:
  x, w = jnp.zeros((1, *x_shape, 1)), jnp.zeros((*w_shape, 1, 1))
  return ops.geometry_of(
    x,
    w,
    stride=kw.get("stride", 1),
    padding=kw.get("padding", "valid"),
    dilation=kw.get("dilation", 1),
    groups=1,
    convention="scipy",
  )


FUNCTIONS = {
  f.name: f
  for f in [
    Function(
      "conv",
      jc.conv,
      _lax_conv,
      (2, 5, 5, 2),
      (3, 3, 1, 2),
      (dict(stride=2, padding="same", dilation=(1, 2), groups=2), dict(padding="same", groups=2)),
      _conv_geometry,
    ),
    Function(
      "conv_transpose",
      jc.conv_transpose,
      _lax_conv_transpose,
      (2, 3, 3, 2),
      (3, 3, 1, 2),
      (dict(stride=2, padding=1, output_padding=1, groups=2), dict(padding=1, groups=2)),
      _transpose_geometry,
    ),
    # 1-D: the signal functions bind the same primitive as conv, and a 1-D program compiles faster.
    Function(
      "correlate",
      jc.correlate,
      _lax_correlate,
      (7,),
      (3,),
      (dict(padding="full", stride=2), dict(padding="same")),
      _signal_geometry,
    ),
    Function(
      "convolve",
      jc.convolve,
      _lax_convolve,
      (7,),
      (3,),
      (dict(padding="full", stride=2), dict(padding="same")),
      _signal_geometry,
    ),
  ]
}


def _served(impl: str, fn: Function) -> dict:
  """The richest keyword set of ``fn`` that ``impl`` serves."""
  for kw in fn.candidates:
    try:
      kernels.resolve(impl, fn.geometry(fn.x_shape, fn.w_shape, kw))
      return kw
    except ValueError:
      pass
  raise AssertionError(f"impl={impl!r} serves none of the geometries of {fn.name}: add one it serves")


@functools.cache
def _operands(fn_name: str) -> dict[str, np.ndarray]:
  """Fixed random x, w, their stacks of two (vmap), a cotangent and tangents."""
  fn = FUNCTIONS[fn_name]
  rng = np.random.default_rng(0)

  def normal(*shape):
    return rng.standard_normal(shape).astype(np.float32)

  return dict(
    x=normal(*fn.x_shape),
    w=normal(*fn.w_shape),
    xs=normal(2, *fn.x_shape),
    ws=normal(2, *fn.w_shape),
    tx=normal(*fn.x_shape),
    tw=normal(*fn.w_shape),
  )


# --------------------------------------------------------------------------------------------
# transforms: each maps f(x, w) and the operands to a pytree of arrays


def _loss(f: Fn) -> Fn:
  # Not bilinear, so second derivatives in x alone and w alone are non-zero too.
  return lambda x, w: jnp.sum(jnp.sin(f(x, w)))


def _grad2(f: Fn):
  first = jax.grad(_loss(f), (0, 1))
  return jax.grad(lambda x, w: sum(jnp.sum(jnp.cos(t)) for t in first(x, w)), (0, 1))


def _vjp(f: Fn, o):
  y, pull = jax.vjp(f, o["x"], o["w"])
  ct = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
  return y, pull(ct)


def _linear_transpose(f: Fn, o):
  y = jax.eval_shape(f, o["x"], o["w"])
  ct = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
  return jax.linear_transpose(lambda x: f(x, o["w"]), o["x"])(ct)


TRANSFORMS: dict[str, Callable] = {
  "eager": lambda f, o: f(o["x"], o["w"]),
  "jit": lambda f, o: jax.jit(f)(o["x"], o["w"]),
  "grad": lambda f, o: jax.jit(jax.grad(_loss(f), (0, 1)))(o["x"], o["w"]),
  "grad-eager": lambda f, o: jax.grad(_loss(f), (0, 1))(o["x"], o["w"]),
  "grad2": lambda f, o: jax.jit(_grad2(f))(o["x"], o["w"]),
  "vjp": lambda f, o: jax.jit(lambda x, w: _vjp(f, dict(x=x, w=w)))(o["x"], o["w"]),
  "jvp": lambda f, o: jax.jit(lambda *a: jax.jvp(f, a[:2], a[2:]))(o["x"], o["w"], o["tx"], o["tw"]),
  "linear_transpose": lambda f, o: jax.jit(lambda x, w: _linear_transpose(f, dict(x=x, w=w)))(o["x"], o["w"]),
  "jacfwd": lambda f, o: jax.jit(jax.jacfwd(f, (0, 1)))(o["x"], o["w"]),
  "jacrev": lambda f, o: jax.jit(jax.jacrev(f, (0, 1)))(o["x"], o["w"]),
  "hessian": lambda f, o: jax.jit(jax.hessian(_loss(f), (0, 1)))(o["x"], o["w"]),
  "vmap-x": lambda f, o: jax.jit(jax.vmap(f, (0, None)))(o["xs"], o["w"]),
  "vmap-w": lambda f, o: jax.jit(jax.vmap(f, (None, 0)))(o["x"], o["ws"]),
  "vmap-both": lambda f, o: jax.jit(jax.vmap(f))(o["xs"], o["ws"]),
  # Per-example gradients: one gradient of the shared w per stacked x.
  "vmap-of-grad": lambda f, o: jax.jit(jax.vmap(jax.grad(_loss(f), (0, 1)), (0, None)))(o["xs"], o["w"]),
  "grad-of-vmap": lambda f, o: jax.jit(jax.grad(_loss(jax.vmap(f)), (0, 1)))(o["xs"], o["ws"]),
}


# Transforms compiled together, one program per (impl, function): XLA's compile time, not the
# tiny arithmetic, is what these tests cost. conv gets every transform; the others reach the same
# three primitives and rules, so they get the subset that still runs each of their own paths:
# conv_transpose's primal is the input-gradient primitive (folded by vmap-x, mapped by
# vmap-both), correlate and convolve are conv on one channel (convolve: with the kernel flipped).
EAGER = ("eager", "grad-eager")
GRID = {
  "conv": tuple(TRANSFORMS),
  "conv_transpose": ("jit", "grad", "jvp", "vmap-x", "vmap-both", "hessian"),
  "correlate": ("jit", "grad", "jvp", "vmap-both"),
  "convolve": ("jit", "grad", "jvp"),
}
# The costly transforms (two thirds of the compile time of conv's program) are compositions of the
# cheap ones that every impl runs (grad, vjp, jvp, vmap, vmap-of-grad, grad-of-vmap): each impl
# gets one second-order transform (hessian or grad2) and one Jacobian (jacfwd or jacrev) on conv,
# alternating so that each of the four still runs on five impls; conv_transpose's hessian runs on
# the grad2 half, so every impl meets both second-order transforms. test_check_grads_order_2 checks
# second order in both modes on every impl besides. An impl not listed here runs all of them.
COSTLY = ("grad2", "hessian", "jacfwd", "jacrev")
COSTLY_SUBSET = {
  "toeplitz": ("grad2", "jacrev"),
  "winograd": ("hessian", "jacfwd"),
  "auto": ("hessian", "jacfwd"),
  "depthwise": ("grad2", "jacrev"),
  "fft": ("hessian", "jacrev"),
  "im2col": ("hessian", "jacfwd"),
  "lax": ("grad2", "jacrev"),
  "hybrid": ("grad2", "jacfwd"),
  "onednn": ("grad2", "jacrev"),
  "patches": ("hessian", "jacfwd"),
}


def _transforms_of(impl: str, fn_name: str) -> tuple[str, ...]:
  """``GRID[fn_name]`` less the costly transforms that ``COSTLY_SUBSET`` does not give ``impl`` on it."""
  if impl not in COSTLY_SUBSET:
    return GRID[fn_name]
  kept = COSTLY_SUBSET[impl] if fn_name == "conv" else ("hessian",) if "grad2" in COSTLY_SUBSET[impl] else ()
  return tuple(n for n in GRID[fn_name] if n not in COSTLY or n in kept)


# Half the compile time of XLA's defaults on these tiny programs; the arithmetic is unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run_all(f: Fn, o: dict, names: tuple[str, ...]) -> dict:
  """``{name: TRANSFORMS[name](f, o)}``, the jit-able ones under one jit; a failing trace is named."""
  jittable = tuple(n for n in names if n not in EAGER)
  try:
    program = jax.jit(lambda o: {n: TRANSFORMS[n](f, o) for n in jittable}).lower(o)
    results = program.compile(compiler_options=FAST_COMPILE)(o)
  except Exception:
    results = {}
    for n in jittable:
      try:
        results[n] = TRANSFORMS[n](f, o)
      except Exception as e:
        results[n] = e
  for n in names:
    if n in EAGER:
      try:
        results[n] = TRANSFORMS[n](f, o)
      except Exception as e:
        results[n] = e
  return results


@functools.cache
def _reference(fn_name: str, kw_key: tuple) -> dict:
  fn = FUNCTIONS[fn_name]
  ref = functools.partial(fn.reference, **dict(kw_key))
  results = _run_all(ref, _operands(fn_name), GRID[fn_name])
  return {n: jax.tree.map(np.asarray, r) for n, r in results.items()}


def _mismatch(actual, expected) -> str | None:
  """Why two pytrees differ beyond float32 tolerance (scaled by the result's size), or None."""
  if isinstance(actual, Exception):
    return f"raised {type(actual).__name__}: {str(actual)[:300]}"
  a_leaves, a_tree = jax.tree.flatten(actual)
  e_leaves, e_tree = jax.tree.flatten(expected)
  if a_tree != e_tree:
    return f"structure {a_tree} != {e_tree}"
  for a, e in zip(a_leaves, e_leaves):
    if a.shape != e.shape:
      return f"shape {a.shape} != {e.shape}"
    # Winograd's and FFT's transforms round more than a direct sum: tolerance scaled by the result.
    scale = 1.0 + float(np.max(np.abs(e), initial=0.0))
    if not np.allclose(np.asarray(a), e, rtol=2e-4, atol=2e-4 * scale):
      return f"max abs error {float(np.max(np.abs(np.asarray(a) - e))):.3g} (scale {scale:.3g})"
  return None


def _assert_trees_close(actual, expected, what: str) -> None:
  problem = _mismatch(actual, expected)
  assert problem is None, f"{what}: {problem}"


# Four kernels' conv grids in the slow set (3-6 s each on a 2-core AVX2 EPYC).
SLOW_GRIDS = {("winograd", "conv"), ("toeplitz", "conv"), ("fft", "conv"), ("depthwise", "conv")}


@pytest.mark.parametrize(
  ("impl", "fn_name"),
  [
    pytest.param(impl, fn_name, marks=[pytest.mark.slow] if (impl, fn_name) in SLOW_GRIDS else [])
    for impl in IMPLS
    for fn_name in FUNCTIONS
  ],
)
def test_transforms_match_lax(impl: str, fn_name: str):
  """Every transform of ``_transforms_of(impl, fn)`` of ``jc.<fn>(impl=...)`` equals it of the lax reference."""
  fn = FUNCTIONS[fn_name]
  kw = _served(impl, fn)
  f = functools.partial(fn.call, impl=impl, **kw)
  names = _transforms_of(impl, fn_name)
  actual = _run_all(f, _operands(fn_name), names)
  expected = _reference(fn_name, tuple(sorted(kw.items())))
  failures = {n: _mismatch(actual[n], expected[n]) for n in names}
  failures = {n: why for n, why in failures.items() if why is not None}
  assert not failures, f"{fn_name}(impl={impl!r}, {kw}) differs from lax under: {failures}"


def test_every_impl_meets_second_order_and_every_costly_transform_runs():
  """The subset keeps a jitted second-order transform and a Jacobian per impl, each costly one somewhere."""
  for impl in IMPLS:
    conv = set(_transforms_of(impl, "conv"))
    assert conv & {"grad2", "hessian"} and conv & {"jacfwd", "jacrev"}, impl
    assert set(GRID["conv"]) - set(COSTLY) <= conv, impl
  for fn_name in FUNCTIONS:
    ran = {n for impl in IMPLS for n in _transforms_of(impl, fn_name)}
    assert ran == set(GRID[fn_name]), fn_name


@pytest.mark.parametrize("impl", IMPLS)
def test_check_grads_order_2(impl: str):
  """Forward and reverse mode of conv to second order agree with finite differences (float32: loose eps/tol)."""
  fn_name = "conv"
  fn = FUNCTIONS[fn_name]
  # Eager: each primitive is compiled once per geometry (its impl rule caches it) and reused by
  # every finite difference, where a jitted f would compile every jvp/vjp program anew.
  f = functools.partial(fn.call, impl=impl, **_served(impl, fn))
  o = _operands(fn_name)
  check_grads(f, (o["x"], o["w"]), order=2, modes=("fwd", "rev"), eps=1e-2, atol=5e-2, rtol=5e-2)


# --------------------------------------------------------------------------------------------
# a bias in the kernel's own calls (forward_bias, kernel_grad_bias): their two primitives' rules

BIAS_IMPLS = tuple(impl for impl in IMPLS if kernels.get(impl).forward_bias is not None)
# Cheap ones in the fast run (each rule of both primitives: jvp, transposes, both batchings);
# every transform of conv in the slow run.
BIAS_FAST = ("jit", "grad", "grad2", "vjp", "jvp", "vmap-x", "vmap-both", "vmap-of-grad")


def _bias_of(w: jax.Array) -> jax.Array:
  """A bias derived from the kernel, so that w's derivatives of every order reach the bias's too."""
  return 0.5 * w[0, 0, 0, :] + 0.25


def _check_bias_transforms(impl: str, names: tuple[str, ...]) -> None:
  fn = FUNCTIONS["conv"]
  kw = _served(impl, fn)
  f = lambda x, w: jc.conv(x, w, _bias_of(w), impl=impl, **kw)
  ref = lambda x, w: _lax_conv(x, w, **kw) + _bias_of(w)
  actual = _run_all(f, _operands("conv"), names)
  expected = _run_all(ref, _operands("conv"), names)
  failures = {n: _mismatch(actual[n], jax.tree.map(np.asarray, expected[n])) for n in names}
  failures = {n: why for n, why in failures.items() if why is not None}
  assert not failures, f"conv(impl={impl!r}, {kw}) with a bias differs from lax under: {failures}"


def test_bias_impls_include_onednn_where_available():
  assert ("onednn" in BIAS_IMPLS) == ("onednn" in IMPLS)


@pytest.mark.parametrize("impl", BIAS_IMPLS)
def test_fused_bias_transforms_match_lax(impl: str):
  _check_bias_transforms(impl, BIAS_FAST)


@pytest.mark.slow
@pytest.mark.parametrize("impl", BIAS_IMPLS)
def test_fused_bias_every_transform_matches_lax(impl: str):
  _check_bias_transforms(impl, tuple(n for n in GRID["conv"] if n not in BIAS_FAST))


# --------------------------------------------------------------------------------------------
# zero-size inputs

ZERO_SIZE = {
  "N=0": ((0, 4, 4, 2), (3, 3, 2, 3)),
  "C_in=0": ((2, 4, 4, 0), (3, 3, 0, 3)),
  "C_out=0": ((2, 4, 4, 2), (3, 3, 2, 0)),
}


def _zero_size_reference(fn_name: str, x, w, b):
  y = (
    _lax_conv(x, w, padding="same")
    if fn_name == "conv"
    else _lax_conv_transpose(x, w, stride=2, padding=1, output_padding=1)
  )
  return y + b


@pytest.mark.parametrize("case", list(ZERO_SIZE))
@pytest.mark.parametrize("fn_name", ["conv", "conv_transpose"])
@pytest.mark.parametrize("impl", IMPLS)
def test_zero_size_gives_lax_result_and_gradients(impl: str, fn_name: str, case: str):
  """An empty x, w or output gives lax's result (zeros plus the bias) and lax's gradients."""
  x_shape, w_shape = ZERO_SIZE[case]
  rng = np.random.default_rng(1)
  x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
  if fn_name == "conv_transpose":  # its w is (*k, C_in // groups, C_out) of its own x: C_out is w's last axis
    w = rng.standard_normal((*w_shape[:2], x_shape[-1], w_shape[-1])).astype(np.float32)
    kw = dict(stride=2, padding=1, output_padding=1)
  else:
    kw = dict(padding="same")
  b = rng.standard_normal(w.shape[-1]).astype(np.float32)
  # Eager: no kernel runs on an empty call, so the few ops it runs are compiled once for all impls.
  f = lambda x, w, b: getattr(jc, fn_name)(x, w, b, impl=impl, **kw)
  expected = _zero_size_reference(fn_name, x, w, b)
  _assert_trees_close(f(x, w, b), np.asarray(expected), f"{fn_name}(impl={impl!r}) {case}")
  loss = lambda fun: lambda x, w, b: jnp.sum(jnp.sin(fun(x, w, b)))
  grads = jax.grad(loss(f), (0, 1, 2))(x, w, b)
  expected_grads = jax.grad(loss(functools.partial(_zero_size_reference, fn_name)), (0, 1, 2))(x, w, b)
  _assert_trees_close(grads, jax.tree.map(np.asarray, expected_grads), f"grad of {fn_name}(impl={impl!r}) {case}")


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_over_an_empty_axis(impl: str):
  """vmap over a zero-size axis folds into a batch of 0 inside the primitive: lax's empty result."""
  x, w = np.ones((0, 2, 5, 5, 2), np.float32), np.ones((3, 3, 1, 2), np.float32)
  f = functools.partial(jc.conv, impl=impl, padding="same", groups=2)
  y = jax.jit(jax.vmap(f, (0, None)))(x, w)
  assert y.shape == (0, 2, 5, 5, 2)
  dw = jax.grad(lambda w: jnp.sum(jax.vmap(f, (0, None))(x, w)))(w)
  np.testing.assert_array_equal(dw, np.zeros_like(w))


# --------------------------------------------------------------------------------------------
# non-finite locality: the registry's ``local`` flag against what each kernel does

# 10x10 input, 3x3 kernel, valid: 8x8 outputs, more than one Winograd tile (4x4) and a toeplitz
# row band narrower than the output. auto picks toeplitz here (LeNet-like: few channels).
LOCAL_X, LOCAL_W = (1, 10, 10, 1), (3, 3, 1, 2)
BAD_PIXEL = (0, 1, 2, 0)


def _seen_by(x_shape, bad, k: int = 3) -> np.ndarray:
  """Which valid outputs ``(H_o, W_o)`` have the bad pixel in their window (a loop, stride 1)."""
  h_o, w_o = x_shape[1] - k + 1, x_shape[2] - k + 1
  i, j = bad[1], bad[2]
  return np.array([[i - k < r <= i and j - k < c <= j for c in range(w_o)] for r in range(h_o)])


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_locality_matches_the_registry(impl: str, value: float):
  """local=True: outputs whose windows miss the bad pixel stay finite; local=False: some do not."""
  rng = np.random.default_rng(2)
  x, w = rng.standard_normal(LOCAL_X).astype(np.float32), rng.standard_normal(LOCAL_W).astype(np.float32)
  x[BAD_PIXEL] = value
  y = np.asarray(jax.jit(functools.partial(jc.conv, impl=impl))(x, w))
  seen = _seen_by(LOCAL_X, BAD_PIXEL)
  assert not np.isfinite(y[0][seen]).any(), "the outputs that see the bad pixel must be non-finite, as in lax"
  outside_finite = np.isfinite(y[0][~seen]).all()
  ran = kernels.resolve(
    impl, ops.geometry_of(jnp.zeros(LOCAL_X), jnp.zeros(LOCAL_W), stride=1, padding="valid", dilation=1, groups=1)
  ).name
  # An alias ("auto") is registered as its least local choice; here it behaves as the kernel it ran.
  local = kernels.get(ran).local
  if local:
    assert outside_finite, f"impl={impl!r} is registered local=True but spreads a {value} outside its windows"
  else:
    assert not outside_finite, f"impl={impl!r} (ran {ran!r}) is registered local=False but kept a {value} local here"
