"""jaxconv.conv_general_dilated against jax.lax.conv_general_dilated itself, and injected into Flax.

The grid: a fixed-seed sample of calls over dimension numbers (lax's default NCHW/OIHW, NHWC/HWIO,
NWC, NDHWC, a ConvDimensionNumbers object, odd permutations, lhs spatial axes in another order
than rhs's) x padding ("SAME", "VALID", "SAME_LOWER", pairs, negative pairs) x strides x
rhs_dilation x lhs_dilation x feature groups. Layout and padding are cycled so that every layout
meets a string padding and explicit pads and every padding kind several layouts (``PADDINGS_OF_LAYOUT``);
the rest is drawn at random. Values and both gradients are compared under jit.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import random as pyrandom

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from references import IMPLS, assert_close, random, rtol_for, with_vjp

import jaxconv as jc
from jaxconv.lax_compat import conv_general_dilated

# (dimension_numbers as passed to lax, number of spatial axes)
LAYOUTS = [
  (None, 2),  # lax's default: NCHW / OIHW / NCHW
  (("NHWC", "HWIO", "NHWC"), 2),
  (("NWC", "WIO", "NWC"), 1),
  (("NDHWC", "DHWIO", "NDHWC"), 3),
  (lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)), 2),
  (("HNCW", "WHOI", "CWHN"), 2),  # odd permutations everywhere
  (("NWHC", "HWIO", "NCHW"), 2),  # lhs lists its spatial axes in another order than rhs
  (None, 1),  # NCW / OIW / NCW
  (("CWN", "IWO", "WNC"), 1),
]
PADDINGS = ["SAME", "VALID", "SAME_LOWER", "pairs", "negative"]


@dataclasses.dataclass(frozen=True)
class Case:
  """One lax call: array shapes in their layouts and every keyword."""

  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  window_strides: tuple[int, ...]
  padding: str | tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...] | None
  rhs_dilation: tuple[int, ...] | None
  dimension_numbers: object
  feature_group_count: int

  def kwargs(self) -> dict:
    return {
      "window_strides": self.window_strides,
      "padding": self.padding,
      "lhs_dilation": self.lhs_dilation,
      "rhs_dilation": self.rhs_dilation,
      "dimension_numbers": self.dimension_numbers,
      "feature_group_count": self.feature_group_count,
    }

  def __str__(self) -> str:
    dn = self.dimension_numbers
    dn = "default" if dn is None else ("cdn" if isinstance(dn, lax.ConvDimensionNumbers) else "/".join(dn))
    return (
      f"{dn}-{self.lhs_shape}-{self.rhs_shape}-s{self.window_strides}-p{self.padding}"
      f"-ld{self.lhs_dilation}-rd{self.rhs_dilation}-g{self.feature_group_count}"
    )


def _place(canonical: tuple[int, ...], spec: tuple[int, ...]) -> tuple[int, ...]:
  """An array shape whose axis ``spec[k]`` has size ``canonical[k]``."""
  shape = [0] * len(canonical)
  for k, axis in enumerate(spec):
    shape[axis] = canonical[k]
  return tuple(shape)


def _draw_case(r: pyrandom.Random, dimension_numbers, rank: int, padding_kind: str) -> Case:
  """A random call with the given layout and padding kind (sizes small, output possibly cropped)."""
  dnums = lax.conv_dimension_numbers((0,) * (rank + 2), (0,) * (rank + 2), dimension_numbers)
  groups = r.choice([1, 1, 2, 3])
  c_in, c_out = groups * r.choice([1, 2]), groups * r.choice([1, 2])
  spatial = tuple(r.randint(4, 8) for _ in range(rank))
  kernel = tuple(r.randint(1, 3) for _ in range(rank))
  strides = tuple(r.choice([1, 1, 2]) for _ in range(rank))
  rhs_dil = r.choice([None, tuple(r.choice([1, 2]) for _ in range(rank))])
  lhs_dil = None
  if padding_kind in ("pairs", "negative"):
    low = -2 if padding_kind == "negative" else 0
    padding = tuple((r.randint(low, 2), r.randint(low, 2)) for _ in range(rank))
    if padding_kind == "negative" and all(v >= 0 for p in padding for v in p):
      padding = ((-1, padding[0][1]), *padding[1:])
    lhs_dil = r.choice([None, tuple(r.choice([1, 2, 3]) for _ in range(rank))])
  else:
    padding = padding_kind
  lhs_shape = _place((r.randint(1, 2), c_in, *spatial), dnums.lhs_spec)
  rhs_shape = _place((c_out, c_in // groups, *kernel), dnums.rhs_spec)
  return Case(lhs_shape, rhs_shape, strides, padding, lhs_dil, rhs_dil, dimension_numbers, groups)


def _grid(n: int, seed: int = 0) -> list[Case]:
  """``n`` cases cycling layouts x padding kinds (coprime counts: all pairs within 45), non-empty outputs."""
  r = pyrandom.Random(seed)
  cases = []
  i = 0
  while len(cases) < n:
    dn, rank = LAYOUTS[i % len(LAYOUTS)]
    case = _draw_case(r, dn, rank, PADDINGS[i % len(PADDINGS)])
    shape = jax.eval_shape(
      functools.partial(lax.conv_general_dilated, **case.kwargs()),
      jax.ShapeDtypeStruct(case.lhs_shape, jnp.float32),
      jax.ShapeDtypeStruct(case.rhs_shape, jnp.float32),
    ).shape
    if 0 not in shape:  # empty outputs have their own test
      cases.append(case)
      i += 1
  return cases


# Each layout with a string padding and explicit pads (both signs where lhs and rhs list their spatial
# axes differently, where pads are easiest to put on the wrong axis), each padding kind on three or
# more layouts: 20 of the 45 pairs, each compiled with both gradients. Indices into ``_grid(45)``,
# which cycles layout i % 9 and padding i % 5.
PADDINGS_OF_LAYOUT = [
  ("SAME", "pairs"),
  ("VALID", "negative"),
  ("SAME_LOWER", "pairs"),
  ("pairs", "VALID"),
  ("negative", "SAME_LOWER"),
  ("SAME", "pairs", "negative"),
  ("VALID", "pairs", "negative"),
  ("SAME_LOWER", "negative"),
  ("pairs", "SAME"),
]
GRID = [
  c
  for i, c in enumerate(_grid(len(LAYOUTS) * len(PADDINGS)))
  if PADDINGS[i % len(PADDINGS)] in PADDINGS_OF_LAYOUT[i % len(LAYOUTS)]
]
SMALL_GRID = GRID[:5]  # every impl on these; the whole grid with "auto"
# Forward mode: two grid cases (groups; lhs dilation with negative pads), and a 3x3 stride-1 one that
# winograd serves (it refuses the others). 1-D jvp of every impl: test_transforms (correlate, convolve).
FWD_GRID = [
  GRID[0],
  GRID[4],
  Case((2, 6, 6, 2), (3, 3, 2, 3), (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC"), 1),
]


def _arrays(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random lhs, rhs and an output cotangent for ``case``."""
  rng = np.random.default_rng(seed)
  lhs, rhs = random(rng, case.lhs_shape, case.rhs_shape)
  out = jax.eval_shape(functools.partial(lax.conv_general_dilated, **case.kwargs()), lhs, rhs)
  (ct,) = random(rng, out.shape)
  return lhs, rhs, ct


@functools.cache
def _lax_result(case: Case):
  """lax's value and (d lhs, d rhs) for ``case``, at the highest precision, under jit."""
  lhs, rhs, ct = _arrays(case)
  f = functools.partial(lax.conv_general_dilated, **case.kwargs(), precision=lax.Precision.HIGHEST)
  return jax.tree.map(np.asarray, with_vjp(f)(lhs, rhs, ct))


def _check_against_lax(case: Case, impl: str) -> None:
  lhs, rhs, ct = _arrays(case)
  mine = functools.partial(jc.conv_general_dilated, **case.kwargs(), impl=impl)
  y, (dlhs, drhs) = with_vjp(mine)(lhs, rhs, ct)
  y_ref, (dlhs_ref, drhs_ref) = _lax_result(case)
  for what, a, b in (("y", y, y_ref), ("d lhs", dlhs, dlhs_ref), ("d rhs", drhs, drhs_ref)):
    assert_close(a, b, rtol_for(impl), f"{impl} {what} {case}")


# --------------------------------------------------------------------------------------------
# the signature


def test_signature_is_laxs_plus_impl():
  """Same parameter names, kinds, order and defaults as this jax's lax.conv_general_dilated."""
  ours = inspect.signature(jc.conv_general_dilated).parameters
  theirs = inspect.signature(lax.conv_general_dilated).parameters
  assert [(p.name, p.kind, p.default) for p in theirs.values()] == [(p.name, p.kind, p.default) for p in ours.values()][
    :-1
  ]
  assert ours["impl"].kind is inspect.Parameter.KEYWORD_ONLY and ours["impl"].default == "auto"
  assert "auto" in jc.available_impls()


def _padding_kind(c: Case) -> str:
  if isinstance(c.padding, str):
    return c.padding
  return "negative" if min(min(p) for p in c.padding) < 0 else "pairs"


def test_grid_covers_every_layout_with_string_and_explicit_padding():
  seen = {(repr(c.dimension_numbers), len(c.lhs_shape), _padding_kind(c)) for c in GRID}
  assert len(seen) == len(GRID) == sum(map(len, PADDINGS_OF_LAYOUT))
  for dn, rank in LAYOUTS:
    kinds = {kind for d, ndim, kind in seen if (d, ndim) == (repr(dn), rank + 2)}
    assert kinds & {"SAME", "VALID", "SAME_LOWER"} and kinds & {"pairs", "negative"}, (dn, rank)
  assert {kind for *_, kind in seen} == set(PADDINGS)
  assert any(c.lhs_dilation and max(c.lhs_dilation) > 1 for c in GRID)
  assert any(c.rhs_dilation and max(c.rhs_dilation) > 1 for c in GRID)
  assert any(c.feature_group_count > 1 for c in GRID)
  assert any(max(c.window_strides) > 1 for c in GRID)


# --------------------------------------------------------------------------------------------
# values and gradients


@pytest.mark.parametrize("case", GRID, ids=str)
def test_values_and_grads_match_lax(case):
  _check_against_lax(case, "auto")


# depthwise and toeplitz in the slow set; the fast set checks them against lax in tests/test_conv.py.
@pytest.mark.parametrize("case", SMALL_GRID, ids=str)
@pytest.mark.parametrize(
  "impl",
  [pytest.param(i, marks=[pytest.mark.slow] if i in ("depthwise", "toeplitz") else []) for i in IMPLS if i != "auto"],
)
def test_every_impl_matches_lax(case, impl):
  _check_against_lax(case, impl)


def _fwd_params():
  for impl in IMPLS:
    for case in FWD_GRID:
      yield pytest.param(case, impl, id=f"{impl}-{case}")


@pytest.mark.parametrize(("case", "impl"), list(_fwd_params()))
def test_forward_mode_matches_lax(case, impl):
  """jax.jvp (tangents in lhs and rhs at once) under jit, against lax's jvp."""
  lhs, rhs, _ = _arrays(case)
  dlhs, drhs, _ = _arrays(case, seed=1)
  ref = functools.partial(lax.conv_general_dilated, **case.kwargs(), precision=lax.Precision.HIGHEST)
  mine = functools.partial(jc.conv_general_dilated, **case.kwargs(), impl=impl)
  jvp = jax.jit(lambda f, *a: jax.jvp(f, a[:2], a[2:]), static_argnums=0)
  for got, want in zip(jvp(mine, lhs, rhs, dlhs, drhs), jvp(ref, lhs, rhs, dlhs, drhs)):
    assert_close(got, want, rtol_for(impl), f"{impl} jvp {case}")


def test_runs_on_jaxconvs_kernel_not_lax():
  """With a GEMM kernel named, no XLA convolution is left in the program (forward or backward)."""
  case = GRID[1]
  lhs, rhs, ct = _arrays(case)
  f = functools.partial(jc.conv_general_dilated, **case.kwargs(), impl="im2col")
  # The lowered program, not the jaxpr: kernels may be wrapped in a primitive of their own.
  hlo = jax.jit(lambda a, b: jax.vjp(f, a, b)[1](ct)).lower(lhs, rhs).as_text()
  assert "convolution" not in hlo
  assert "dot_general" in hlo


def test_partial_picks_an_impl():
  case = GRID[0]
  lhs, rhs, _ = _arrays(case)
  conv = functools.partial(jc.conv_general_dilated, impl="patches")
  assert_close(
    jax.jit(
      lambda a, b: conv(
        a,
        b,
        case.window_strides,
        case.padding,
        dimension_numbers=case.dimension_numbers,
        feature_group_count=case.feature_group_count,
      )
    )(lhs, rhs),
    _lax_result(case)[0],
    1e-5,
  )


def test_numpy_int_vectors_as_arguments():
  """lax takes numpy vectors for strides and dilations; so does the drop-in."""
  lhs, rhs = random(np.random.default_rng(0), (1, 2, 7, 7), (3, 2, 2, 2))
  _same_as_lax(lhs, rhs, (np.array([1, 2]), "SAME"), {"rhs_dilation": np.array([2, 1])}, grads=False, impl="patches")


def test_vmap_over_a_leading_axis():
  case = GRID[1]
  lhs, rhs, _ = _arrays(case)
  lhs3 = np.stack([lhs, 2 * lhs, -lhs])
  f = functools.partial(conv_general_dilated, **case.kwargs(), impl="patches")
  ref = functools.partial(lax.conv_general_dilated, **case.kwargs(), precision=lax.Precision.HIGHEST)
  assert_close(jax.jit(jax.vmap(f, in_axes=(0, None)))(lhs3, rhs), jax.vmap(ref, in_axes=(0, None))(lhs3, rhs), 1e-5)


# --------------------------------------------------------------------------------------------
# what goes to lax, and what needs no kernel


def _same_as_lax(lhs, rhs, args, kwargs, *, grads: bool = True, impl: str = "auto") -> None:
  """Value (and gradients for floats) of the drop-in equal lax's, exactly dtype for dtype."""
  y = jax.jit(lambda a, b: jc.conv_general_dilated(a, b, *args, **kwargs, impl=impl))(lhs, rhs)
  y_ref = lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
  assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
  np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(y_ref, np.float64), rtol=1e-5, atol=1e-5)
  if grads:
    loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b, *args, **kwargs).astype(jnp.float32)))
    g = jax.jit(jax.grad(loss(functools.partial(jc.conv_general_dilated, impl=impl)), argnums=(0, 1)))(lhs, rhs)
    g_ref = jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1))(lhs, rhs)
    for a, b in zip(g, g_ref):
      assert a.shape == b.shape and a.dtype == b.dtype
      np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-4)


def test_batch_group_count_goes_to_lax():
  lhs, rhs = random(np.random.default_rng(0), (4, 3, 6, 6), (4, 3, 3, 3))
  _same_as_lax(lhs, rhs, ((1, 1), "SAME"), {"batch_group_count": 2})


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.bool_, jnp.complex64])
def test_non_float_dtypes_go_to_lax(dtype):
  rng = np.random.default_rng(0)
  lhs, rhs = (rng.integers(-3, 3, s).astype(dtype) for s in ((2, 3, 5, 5), (4, 3, 2, 2)))
  _same_as_lax(lhs, rhs, ((1, 1), "VALID"), {}, grads=False)


def test_int8_with_int32_accumulation_goes_to_lax():
  rng = np.random.default_rng(0)
  lhs, rhs = (rng.integers(-100, 100, s).astype(np.int8) for s in ((2, 3, 5, 5), (4, 3, 2, 2)))
  _same_as_lax(lhs, rhs, ((1, 1), "VALID"), {"preferred_element_type": jnp.int32}, grads=False)


@pytest.mark.parametrize("impl", ["im2col", "patches"])
def test_bfloat16_with_float32_accumulation(impl):
  """preferred_element_type wider than the inputs: a float32 result with no bfloat16 rounding."""
  lhs, rhs = random(np.random.default_rng(0), (2, 6, 7, 7), (4, 6, 3, 3))
  lhs, rhs = lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16)
  _same_as_lax(lhs, rhs, ((1, 1), "SAME"), {"preferred_element_type": jnp.float32}, impl=impl)
  y = jc.conv_general_dilated(lhs, rhs, (1, 1), "SAME", impl=impl)
  assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize("precision", [lax.Precision.HIGHEST, "highest", (lax.Precision.DEFAULT, lax.Precision.HIGH)])
def test_explicit_precision_goes_to_lax(precision):
  lhs, rhs = random(np.random.default_rng(0), (2, 3, 6, 6), (4, 3, 3, 3))
  f = functools.partial(
    jc.conv_general_dilated, window_strides=(1, 1), padding="SAME", precision=precision, impl="im2col"
  )
  assert "convolution" in jax.jit(f).lower(lhs, rhs).as_text()
  _same_as_lax(lhs, rhs, ((1, 1), "SAME"), {"precision": precision})


@pytest.mark.parametrize(
  ("lhs_shape", "rhs_shape", "args"),
  [
    ((2, 3), (4, 3), ((), "VALID")),  # no spatial axis
    ((1, 2, 3, 3, 3, 3), (2, 2, 2, 2, 2, 2), ((1, 1, 1, 1), "SAME")),  # four
  ],
)
def test_other_spatial_ranks_go_to_lax(lhs_shape, rhs_shape, args):
  lhs, rhs = random(np.random.default_rng(0), lhs_shape, rhs_shape)
  _same_as_lax(lhs, rhs, args, {})


def test_a_kernels_refusal_goes_to_lax():
  """winograd serves 3-tap kernels only; a 2x2 kernel runs on lax instead of raising."""
  lhs, rhs = random(np.random.default_rng(0), (2, 3, 6, 6), (4, 3, 2, 2))
  with pytest.raises(ValueError, match="does not support"):
    jc.conv(np.moveaxis(lhs, 1, -1), np.transpose(rhs, (2, 3, 1, 0)), impl="winograd")
  _same_as_lax(lhs, rhs, ((1, 1), "SAME"), {}, impl="winograd")


def test_out_sharding_none_is_accepted():
  lhs, rhs = random(np.random.default_rng(0), (2, 3, 6, 6), (4, 3, 3, 3))
  _same_as_lax(lhs, rhs, ((1, 1), "SAME"), {"out_sharding": None}, impl="im2col")


@pytest.mark.parametrize("impl", ["auto", "im2col"])  # answered before any kernel runs
@pytest.mark.parametrize(
  ("lhs_shape", "rhs_shape", "padding"),
  [
    ((0, 3, 6, 6), (4, 3, 3, 3), "SAME"),  # N = 0
    ((2, 0, 6, 6), (4, 0, 3, 3), "SAME"),  # C_in = 0: zeros
    ((2, 3, 6, 6), (0, 3, 3, 3), "SAME"),  # C_out = 0
    ((2, 3, 6, 6), (4, 3, 9, 3), "VALID"),  # kernel larger than the input: empty output in lax
    ((2, 3, 6, 6), (4, 3, 3, 3), ((-3, -2), (0, 0))),  # cropped below the kernel size
  ],
)
def test_empty_inputs_and_outputs(impl, lhs_shape, rhs_shape, padding):
  lhs, rhs = random(np.random.default_rng(0), lhs_shape, rhs_shape)
  _same_as_lax(lhs, rhs, ((1, 1), padding), {}, impl=impl)


# --------------------------------------------------------------------------------------------
# errors: lax's exception kinds, raised before tracing, naming the argument


X, W = np.ones((2, 4, 8, 8), np.float32), np.ones((6, 4, 3, 3), np.float32)
P = ((0, 0), (0, 0))

BAD_CALLS = {
  # name: (args, kwargs, the argument our message names, or None for lax's own message)
  "rank mismatch": ((X, W[0], (1, 1), "VALID"), {}, "ndim"),
  "stride 0": ((X, W, (0, 1), "SAME"), {}, "window_strides"),
  "stride -1": ((X, W, (-1, 1), "VALID"), {}, "window_strides"),
  "stride length": ((X, W, (1,), "VALID"), {}, "window_strides"),
  "stride int": ((X, W, 1, "VALID"), {}, "window_strides"),
  "stride float": ((X, W, (1.5, 1), "VALID"), {}, "window_strides"),
  "padding unknown string": ((X, W, (1, 1), "FULL"), {}, "padding"),
  "padding count": ((X, W, (1, 1), [(1, 1)]), {}, "padding"),
  "padding triple": ((X, W, (1, 1), [(1, 1, 1), (1, 1, 1)]), {}, "padding"),
  "padding float": ((X, W, (1, 1), [(1.0, 1), (1, 1)]), {}, "padding"),
  "padding int": ((X, W, (1, 1), 1), {}, "padding"),
  "padding too negative": ((X, W, (1, 1), [(-5, -5), (0, 0)]), {}, None),
  "string padding with lhs_dilation": ((X, W, (1, 1), "SAME"), {"lhs_dilation": (2, 1)}, "padding"),
  "lhs_dilation 0": ((X, W, (1, 1), P), {"lhs_dilation": (0, 1)}, "lhs_dilation"),
  "lhs_dilation length": ((X, W, (1, 1), P), {"lhs_dilation": (2,)}, "lhs_dilation"),
  "lhs_dilation int": ((X, W, (1, 1), P), {"lhs_dilation": 2}, "lhs_dilation"),
  "rhs_dilation 0": ((X, W, (1, 1), P), {"rhs_dilation": (0, 1)}, "rhs_dilation"),
  "rhs_dilation length": ((X, W, (1, 1), P), {"rhs_dilation": (2,)}, "rhs_dilation"),
  "rhs_dilation float": ((X, W, (1, 1), P), {"rhs_dilation": (2.0, 1)}, "rhs_dilation"),
  "feature_group_count 0": ((X, W, (1, 1), P), {"feature_group_count": 0}, "feature_group_count"),
  "feature_group_count 3": ((X, W, (1, 1), P), {"feature_group_count": 3}, "feature_group_count"),
  "feature_group_count channel mismatch": ((X, W, (1, 1), P), {"feature_group_count": 2}, "feature_group_count"),
  "channel mismatch": ((X, W[:, :3], (1, 1), P), {}, "feature"),
  "batch_group_count 0": ((X, W, (1, 1), P), {"batch_group_count": 0}, "batch_group_count"),
  "batch_group_count 3": ((X, W, (1, 1), P), {"batch_group_count": 3}, "batch_group_count"),
  "dtype mismatch": ((X, W.astype(jnp.bfloat16), (1, 1), P), {}, "dtype"),
  "dimension_numbers length": ((X, W, (1, 1), P), {"dimension_numbers": ("NCHW", "OIHW")}, "dimension_numbers"),
  "dimension_numbers letters": (
    (X, W, (1, 1), P),
    {"dimension_numbers": ("NCHW", "OIHW", "NCXW")},
    "dimension_numbers",
  ),
  "dimension_numbers string": ((X, W, (1, 1), P), {"dimension_numbers": "NCHW"}, "dimension_numbers"),
  "preferred_element_type narrower": (
    (X, W, (1, 1), P),
    {"preferred_element_type": jnp.float16},
    "preferred_element_type",
  ),
  "preferred_element_type int for floats": (
    (X, W, (1, 1), P),
    {"preferred_element_type": jnp.int32},
    "preferred_element_type",
  ),
  "precision unknown": ((X, W, (1, 1), P), {"precision": "foo"}, "recision"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_arguments_raise_laxs_kind(name):
  args, kwargs, names = BAD_CALLS[name]
  with pytest.raises(Exception) as lax_error:
    jax.block_until_ready(lax.conv_general_dilated(*args, **kwargs))
  kind = type(lax_error.value)
  assert kind in (TypeError, ValueError, RuntimeError), lax_error.value
  # Raised in Python, before XLA: also when only tracing with abstract shapes.
  for call in (
    lambda: jc.conv_general_dilated(*args, **kwargs),
    lambda: jax.jit(lambda a, b: jc.conv_general_dilated(a, b, *args[2:], **kwargs))(*args[:2]),
  ):
    with pytest.raises(kind) as ours:
      call()
    assert names is None or names in str(ours.value), ours.value


def test_bad_impl():
  with pytest.raises(ValueError, match="impl"):
    jc.conv_general_dilated(X, W, (1, 1), "SAME", impl="nope")
  with pytest.raises(TypeError, match="impl"):
    jc.conv_general_dilated(X, W, (1, 1), "SAME", impl=None)


def test_non_array_input_is_a_type_error():
  with pytest.raises(TypeError, match="lhs"):
    jc.conv_general_dilated(X.tolist(), W, (1, 1), "SAME")


# --------------------------------------------------------------------------------------------
# Flax: the drop-in injected into nnx.Conv and linen.Conv, on copied parameters


FLAX_CONFIGS = [
  # (kernel_size, strides, padding, feature_group_count, kernel_dilation, input_dilation, in, out)
  ((3, 3), 1, "SAME", 1, 1, 1, 3, 8),
  ((3, 3), 2, "VALID", 1, 1, 1, 3, 8),
  ((3, 3), 1, "CIRCULAR", 1, 1, 1, 4, 6),
  ((5, 5), (2, 1), "SAME", 2, 1, 1, 4, 6),
  ((3, 3), 1, "SAME", 4, (2, 1), 1, 4, 8),  # depthwise-like, dilated
  ((3,), 2, ((1, 2),), 1, 1, 2, 3, 5),  # 1-D, transposed: input dilation needs explicit pads
]


def _flax_input(kernel_size, c_in):
  (x,) = random(np.random.default_rng(0), (2, *([9] * len(kernel_size)), c_in))
  return x


def _value_and_grads(apply):
  """jit of ``(params, x) -> (y, d params, d x)`` for the loss ``sum(sin(apply(params, x)))``."""

  def run(params, x):
    y, pullback = jax.vjp(apply, params, x)
    return (y, *pullback(jnp.cos(y)))

  return jax.jit(run)


def _assert_same_results(mine, ref) -> None:
  """Equal outputs and gradients (pytrees of one structure)."""
  assert jax.tree.structure(mine) == jax.tree.structure(ref)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(mine), jax.tree.leaves(ref)):
    assert_close(a, b, 1e-4, jax.tree_util.keystr(path))


# Both modules make the same calls of conv_general_dilated: each config runs in one or both, the
# circular and the 1-D transposed ones in both.
NNX_CONFIGS = [FLAX_CONFIGS[i] for i in (0, 2, 4, 5)]
LINEN_CONFIGS = [FLAX_CONFIGS[i] for i in (1, 2, 3, 5)]
NNX_PARAMS = [pytest.param(c, "auto", id=f"auto-{c}") for c in NNX_CONFIGS] + [
  pytest.param(c, "im2col", id=f"im2col-{c}") for c in FLAX_CONFIGS[2:3]
]


@pytest.mark.parametrize(("config", "impl"), NNX_PARAMS)
def test_nnx_conv(config, impl):
  from flax import nnx

  kernel_size, strides, padding, groups, kernel_dilation, input_dilation, c_in, c_out = config
  make = lambda seed, **conv: nnx.Conv(
    c_in,
    c_out,
    kernel_size,
    strides,
    padding=padding,
    feature_group_count=groups,
    kernel_dilation=kernel_dilation,
    input_dilation=input_dilation,
    bias_init=nnx.initializers.normal(1.0),
    rngs=nnx.Rngs(seed),
    **conv,
  )
  ref, mine = make(0), make(1, conv_general_dilated=functools.partial(jc.conv_general_dilated, impl=impl))
  graphdef_ref, params = nnx.split(ref, nnx.Param)
  graphdef_mine, _ = nnx.split(mine, nnx.Param)  # its own (different) parameters are dropped: params are copied
  x = _flax_input(kernel_size, c_in)
  run = lambda graphdef: _value_and_grads(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)
  _assert_same_results(run(graphdef_mine), run(graphdef_ref))


def test_flax_configs_each_run_in_a_module():
  assert set(NNX_CONFIGS + LINEN_CONFIGS) == set(FLAX_CONFIGS)


@pytest.mark.parametrize("config", LINEN_CONFIGS, ids=str)
def test_linen_conv(config):
  from flax import linen

  kernel_size, strides, padding, groups, kernel_dilation, input_dilation, c_in, c_out = config
  kw = {
    "features": c_out,
    "kernel_size": kernel_size,
    "strides": strides,
    "padding": padding,
    "feature_group_count": groups,
    "kernel_dilation": kernel_dilation,
    "input_dilation": input_dilation,
    "bias_init": jax.nn.initializers.normal(1.0),
  }
  ref, mine = linen.Conv(**kw), linen.Conv(**kw, conv_general_dilated=jc.conv_general_dilated)
  x = _flax_input(kernel_size, c_in)
  params = ref.init(jax.random.key(0), x)  # one set of parameters for both
  _assert_same_results(_value_and_grads(mine.apply)(params, x), _value_and_grads(ref.apply)(params, x))
