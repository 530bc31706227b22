"""conv against jax.lax.conv_general_dilated for every registered impl: values and gradients."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads
from references import IMPLS, LAX_DIMS, assert_close, explicit_pairs, per_axis, random, refusal, rtol_for, with_vjp

import jaxconv as jc


@dataclasses.dataclass(frozen=True)
class Case:
  """A conv call: x ``(N, *S, C_in)``, w ``(*K, C_in // groups, C_out)``, geometry, with or without bias."""

  x: tuple[int, ...]
  w: tuple[int, ...]
  stride: object = 1
  padding: object = "valid"
  dilation: object = 1
  groups: int = 1
  bias: bool = False

  @property
  def geometry(self) -> dict:
    """The keyword arguments of ``jc.conv`` other than ``impl``."""
    return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


CASES = {
  "lenet-conv1": Case((2, 28, 28, 1), (5, 5, 1, 6), padding=2, bias=True),
  "lenet-conv2": Case((2, 14, 14, 6), (5, 5, 6, 16), bias=True),
  "3x3-same": Case((2, 8, 8, 4), (3, 3, 4, 8), padding="same", bias=True),
  "depthwise": Case((2, 9, 9, 4), (3, 3, 1, 4), padding="same", groups=4),
  "grouped": Case((2, 8, 8, 6), (3, 3, 2, 9), padding=1, groups=3, bias=True),
  "1x1-pairs": Case((2, 7, 7, 8), (1, 1, 8, 5), padding=[(1, 0), (0, 2)]),
  "1d-even-strided-same": Case((3, 17, 3), (4, 3, 5), stride=2, padding="same", bias=True),
  "3d-dilated-same": Case((1, 6, 7, 5, 2), (3, 2, 3, 2, 3), padding="same", dilation=(1, 2, 1)),
  "strided-same-even": Case((2, 9, 8, 2), (4, 2, 2, 3), stride=(2, 3), padding="same"),
  "dilated-strided-full": Case((1, 7, 6, 2), (3, 2, 2, 2), stride=(1, 2), dilation=(2, 1), padding="full"),
}


def lax_padding(padding, kernel: tuple[int, ...], dilation) -> str | list[tuple[int, int]]:
  """The padding argument of lax.conv_general_dilated: its own strings, or explicit pairs."""
  if padding == "full":
    return [(d * (k - 1),) * 2 for k, d in zip(kernel, per_axis(dilation, len(kernel)))]
  return padding.upper() if isinstance(padding, str) else explicit_pairs(padding, len(kernel))


def lax_conv(case: Case):
  """The reference ``(x, w, b) -> y``: lax.conv_general_dilated in lax's own terms, plus bias."""
  rank = len(case.x) - 2
  stride, dilation = per_axis(case.stride, rank), per_axis(case.dilation, rank)

  def conv(x, w, b):
    y = lax.conv_general_dilated(
      x,
      w,
      stride,
      lax_padding(case.padding, case.w[:rank], dilation),
      rhs_dilation=dilation,
      dimension_numbers=LAX_DIMS[rank],
      feature_group_count=case.groups,
      precision=lax.Precision.HIGHEST,
    )
    return y if b is None else y + b

  return conv


@functools.cache
def arrays(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
  """x, w, b (None without bias) and an output cotangent for case ``name``."""
  case = CASES[name]
  rng = np.random.default_rng(list(CASES).index(name))
  x, w, b = random(rng, case.x, case.w, case.w[-1:])
  (ct,) = random(rng, jax.eval_shape(lax_conv(case), x, w, None).shape)
  return x, w, b if case.bias else None, ct


@functools.cache
def reference(name: str):
  """lax's value and gradients for case ``name`` (computed once per process)."""
  return with_vjp(lax_conv(CASES[name]))(*arrays(name))


# fft, patches and hybrid in the slow set (14 s together on a 2-core AVX2 EPYC); the fast set checks
# them against lax in tests/test_lax_compat.py.
@pytest.mark.parametrize(
  "impl", [pytest.param(i, marks=[pytest.mark.slow] if i in ("fft", "patches", "hybrid") else []) for i in IMPLS]
)
@pytest.mark.parametrize("name", CASES)
def test_values_and_gradients_match_lax(name: str, impl: str):
  """y and dy/dx, dy/dw, dy/db under jit equal lax's; a refused case raises naming impl."""
  case = CASES[name]
  x, w, b, ct = arrays(name)
  conv = functools.partial(jc.conv, impl=impl, **case.geometry)
  if refusal(impl, case.x, case.w, **case.geometry) is not None:
    with pytest.raises(ValueError, match=f"impl={impl!r}"):
      conv(x, w, b)
    return
  y, grads = with_vjp(conv)(x, w, b, ct)
  y_ref, grads_ref = reference(name)
  tol = rtol_for(impl)
  assert_close(y, y_ref, tol, "y")
  for what, g, g_ref in zip(("dx", "dw", "db"), grads, grads_ref):
    if g_ref is not None:
      assert_close(g, g_ref, tol, what)


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_over_extra_axis(impl: str, rng: np.random.Generator):
  """vmap over a leading axis of x (and of w, or with w shared) equals a loop of lax convs."""
  xs, ws = random(rng, (3, 2, 6, 5, 2), (3, 3, 3, 2, 4))
  geometry = dict(padding="same")
  if refusal(impl, xs.shape[1:], ws.shape[1:], **geometry) is not None:
    pytest.skip(f"{impl} refuses this shape")
  conv = functools.partial(jc.conv, impl=impl, **geometry)
  both, shared = jax.jit(lambda xs, ws: (jax.vmap(conv)(xs, ws), jax.vmap(conv, in_axes=(0, None))(xs, ws[0])))(xs, ws)
  ref = lax_conv(Case(xs.shape[1:], ws.shape[1:], **geometry))
  assert_close(both, np.stack([ref(x, w, None) for x, w in zip(xs, ws)]), rtol_for(impl), "vmap x, w")
  assert_close(shared, np.stack([ref(x, ws[0], None) for x in xs]), rtol_for(impl), "vmap x")


@functools.cache
def bfloat16_case(name: str) -> tuple[list[jax.Array], tuple]:
  """Case ``name``'s arrays rounded to bf16, and lax's float32 answer for the rounded values."""
  rounded = [jnp.asarray(a, jnp.bfloat16) for a in arrays(name)]
  return rounded, with_vjp(lax_conv(CASES[name]))(*(a.astype(np.float32) for a in rounded))


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_in_bfloat16_out(impl: str):
  """bf16 x, w, b give bf16 values and gradients, close to the float32 result of the same inputs."""
  name = "3x3-same"
  case = CASES[name]
  if refusal(impl, case.x, case.w, dtype=jnp.bfloat16, **case.geometry) is not None:
    pytest.skip(f"{impl} refuses bfloat16 or this shape")
  inputs, (y_ref, grads_ref) = bfloat16_case(name)
  y, grads = with_vjp(functools.partial(jc.conv, impl=impl, **case.geometry))(*inputs)
  assert y.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  # bf16 keeps 8 significant bits; accumulating in bf16 over 36 taps would lose several more.
  assert_close(y, y_ref, 2e-2, "y")
  for what, g, g_ref in zip(("dx", "dw", "db"), grads, grads_ref):
    assert_close(g, g_ref, 2e-2, what)


def test_int_inputs_are_promoted_not_truncated():
  """Integer x with a fractional float kernel gives float32 values, not truncated ones."""
  x = np.arange(2 * 5 * 5 * 2, dtype=np.int32).reshape(2, 5, 5, 2)
  w = np.full((2, 2, 2, 3), 0.25, np.float32)
  y = jc.conv(x, w)
  assert y.dtype == jnp.float32
  assert_close(y, lax_conv(Case(x.shape, w.shape))(x.astype(np.float32), w, None), 1e-6, "int x")
  assert jc.conv(x, x[:1, :2, :2, :].transpose(1, 2, 3, 0)).dtype == jnp.float32


# The two kernels of the functional core; every kernel's gradients are held to lax's above.
@pytest.mark.parametrize("impl", [None, "patches"])
def test_check_grads(impl: str | None, rng: np.random.Generator):
  """Reverse-mode gradients agree with finite differences (exact for conv, which is bilinear)."""
  x, w, b = random(rng, (1, 5, 4, 4), (3, 2, 2, 2), (2,))
  geometry = dict(stride=2, padding="same", groups=2)
  check_grads(jax.jit(functools.partial(jc.conv, impl=impl, **geometry)), (x, w, b), order=1, modes=("rev",), eps=0.1)


def test_default_impl_is_lax(rng: np.random.Generator):
  """impl=None traces to the same program as impl="lax"."""
  x, w = random(rng, (1, 5, 5, 2), (3, 3, 2, 2))
  assert str(jax.make_jaxpr(jc.conv)(x, w)) == str(jax.make_jaxpr(functools.partial(jc.conv, impl="lax"))(x, w))
  assert {"lax", "patches"} <= set(jc.available_impls())
