"""The oneDNN kernel's raw functions against lax: values, both transposes, vmap, refusals.

The transforms through the shared mechanism (grad of any order, jvp, ...) are the core grid's
(every registered kernel runs there); here each raw function is checked on its own. Where the
extension or the library is missing the value tests skip with the reason, except under CI
(``$CI`` set), where a missing build is a failure.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxconv.geometry import ConvGeometry, conv_geometry
from jaxconv.kernels import cpu, onednn
from jaxconv.kernels.lax import dimension_numbers

_REASON = onednn._load()
_REASON = _REASON if isinstance(_REASON, str) else None
if _REASON is not None and os.environ.get("CI"):
  raise RuntimeError(f"impl='onednn' must be available in CI: {_REASON}")
needs_onednn = pytest.mark.skipif(_REASON is not None, reason=f"onednn unavailable: {_REASON}")

# (x shape, w shape, conv_geometry keywords): 1-3 spatial axes, stride, dilation, pads, groups.
CASES = [
  ((2, 9, 4), (3, 4, 6), {}),
  ((3, 11, 5), (4, 5, 7), {"stride": 3, "padding": "same", "dilation": 2}),
  ((1, 10, 2), (3, 1, 4), {"padding": ((2, 0),), "groups": 2}),
  ((2, 7, 8, 3), (3, 3, 3, 5), {"padding": 1}),
  ((2, 9, 10, 4), (3, 3, 2, 6), {"stride": 2, "padding": ((1, 2), (0, 1)), "dilation": (1, 2), "groups": 2}),
  ((2, 8, 8, 4), (3, 3, 1, 4), {"padding": "same", "groups": 4}),  # depthwise
  ((1, 12, 9, 2), (5, 2, 2, 3), {"stride": (3, 1), "padding": ((0, 4), (1, 1))}),  # unused input rows
  # oneDNN has only reference code for this backward-weights channels-last: blocked activations.
  ((1, 17, 16, 2), (15, 15, 2, 3), {"padding": "same"}),
  ((2, 5, 6, 7, 3), (2, 3, 2, 3, 4), {"stride": (1, 2, 1), "padding": 1}),
  ((1, 6, 5, 6, 4), (3, 3, 3, 2, 4), {"dilation": (2, 1, 1), "padding": ((2, 2), (1, 1), (0, 1)), "groups": 2}),
]


def _geometry(case) -> ConvGeometry:
  x_shape, w_shape, kwargs = case
  return conv_geometry(x_shape, w_shape, "float32", **kwargs)


def _lax(x: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  return lax.conv_general_dilated(
    x,
    w,
    g.stride,
    g.padding,
    rhs_dilation=g.dilation,
    dimension_numbers=dimension_numbers(g.rank),
    feature_group_count=g.groups,
    precision=lax.Precision.HIGHEST,
  )


def _lax_input_grad(dy: jax.Array, w: jax.Array, g: ConvGeometry) -> jax.Array:
  return jax.vjp(lambda x: _lax(x, w, g), jnp.zeros(g.x_shape, dy.dtype))[1](dy)[0]


def _lax_kernel_grad(x: jax.Array, dy: jax.Array, g: ConvGeometry) -> jax.Array:
  return jax.vjp(lambda w: _lax(x, w, g), jnp.zeros(g.w_shape, x.dtype))[1](dy)[0]


def _operands(rng: np.random.Generator, g: ConvGeometry):
  x, w, dy = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (g.x_shape, g.w_shape, g.out_shape))
  return x, w, dy


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}*{c[1]}")
def test_values_and_transposes_match_lax(rng, case):
  g = _geometry(case)
  assert onednn.supports_onednn(g) is None
  x, w, dy = _operands(rng, g)
  jit = jax.jit(lambda f, a, b: f(a, b, g), static_argnums=0)
  np.testing.assert_allclose(jit(onednn.forward, x, w), _lax(x, w, g), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jit(onednn.input_grad, dy, w), _lax_input_grad(dy, w, g), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jit(onednn.kernel_grad, x, dy), _lax_kernel_grad(x, dy, g), rtol=1e-5, atol=2e-5)


# The extension runs its direct loops on CPUs with AVX-512 or with AVX2 and FMA (built for each):
# where the loops serve a case, they run here.
# The loops' vector width: input gradients run on them into fewer channels than its lanes.
LANES = 16 if "avx512f" in cpu.isa_flags() else 8 if {"avx2", "fma"} <= set(cpu.isa_flags()) else 0
LOOPS = LANES > 0

# Backward-data problems for the extension's direct loops (2-D float32, stride 1, pads <= K - 1, fewer
# input channels than the loops' lanes, dx at most 64 wide), then the edges where oneDNN's primitive keeps them.
DIRECT_CASES = [
  ((3, 14, 14, 6), (5, 5, 6, 16), {}),  # LeNet's conv2
  ((2, 28, 28, 1), (5, 5, 1, 6), {"padding": 2}),  # LeNet's conv1
  ((2, 9, 13, 3), (3, 4, 3, 5), {"padding": ((1, 2), (0, 3))}),  # uneven pads, up to K - 1
  ((1, 5, 64, 2), (2, 3, 2, 7), {"padding": 1}),  # the widest dx
  ((1, 20, 19, 7), (2, 1, 7, 3), {}),  # a 1-wide kernel
  ((2, 7, 8, 7), (3, 3, 7, 4), {}),  # 7 input channels
  ((2, 7, 8, 15), (3, 3, 15, 4), {}),  # 15 input channels: on the loops with 16 lanes, not 8
]
ONEDNN_CASES = [
  ((1, 5, 65, 2), (2, 3, 2, 7), {"padding": 1}),  # dx 65 wide
  ((2, 7, 8, 3), (3, 3, 3, 4), {"padding": ((3, 0), (0, 0))}),  # a pad of K
  ((2, 7, 8, 16), (3, 3, 16, 4), {}),  # 16 input channels fill a vector (two of AVX2's)
  ((2, 9, 8, 3), (3, 3, 3, 4), {"stride": (2, 1)}),
  ((2, 9, 8, 3), (3, 3, 3, 4), {"dilation": 2}),
]


class _Counted(NamedTuple):
  results: list[np.ndarray]
  direct_calls: int


def _counting_direct_calls(run: Callable[[], list[np.ndarray]]) -> _Counted:
  """``run()``'s results and how many calls the extension ran on its direct loops meanwhile."""
  before = onednn._direct_calls()
  results = run()
  return _Counted(results, onednn._direct_calls() - before)


@needs_onednn
@pytest.mark.parametrize(("case", "direct"), [(c, True) for c in DIRECT_CASES] + [(c, False) for c in ONEDNN_CASES])
def test_direct_input_gradients_match_lax_and_the_primitive(rng, monkeypatch, case, direct):
  """The direct loops run exactly where their rule says (the extension counts its calls on them)."""
  g = _geometry(case)
  _, w, dy = _operands(rng, g)
  call = jax.jit(lambda dy, w: onednn.input_grad(dy, w, g))
  ours = _counting_direct_calls(lambda: [np.asarray(call(dy, w))])
  monkeypatch.setenv(onednn.DIRECT_ENV, "0")  # read by the extension on every call: same executable
  primitive = np.asarray(call(dy, w))
  want = _lax_input_grad(dy, w, g)
  # Sums of up to 400 unit-normal products: float32 rounding reaches a few 1e-5.
  np.testing.assert_allclose(ours.results[0], want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(primitive, want, rtol=1e-5, atol=1e-4)
  assert ours.direct_calls == (1 if direct and g.in_channels < LANES else 0)


# Forward and backward-weights problems for the single-channel loops (2-D float32, stride 1, pads
# <= K - 1, one input channel, a square kernel of at most 5 x 5, fewer than 16 output channels), then
# where oneDNN keeps them.
SINGLE_CHANNEL_CASES = [
  ((3, 28, 28, 1), (5, 5, 1, 6), {"padding": 2}),  # LeNet's conv1: channels repeat every P = 3 chunks
  ((3, 9, 13, 1), (3, 3, 1, 5), {"padding": ((1, 2), (0, 2))}),  # P = 5, uneven pads
  ((2, 20, 40, 1), (4, 4, 1, 3), {"padding": 3}),  # an even kernel, rows of 37 * 3 floats
  ((2, 8, 8, 1), (3, 3, 1, 8), {"padding": 1}),  # P = 1
  ((2, 8, 8, 1), (3, 3, 1, 15), {"padding": 1}),  # P = 15
  ((1, 6, 90, 1), (1, 1, 1, 7), {}),  # a 1 x 1 kernel, rows of 90 * 7 floats
]
ONEDNN_SINGLE_CHANNEL_CASES = [
  ((2, 8, 8, 1), (3, 3, 1, 16), {"padding": 1}),  # 16 output channels fill a vector
  ((2, 8, 12, 1), (3, 4, 1, 4), {}),  # not square
  ((2, 12, 12, 1), (6, 6, 1, 4), {}),  # 6 x 6
  ((2, 8, 8, 2), (3, 3, 2, 6), {"padding": 1}),  # two input channels
  ((2, 9, 8, 1), (3, 3, 1, 4), {"stride": 2}),
]
SINGLE_CHANNEL_PARAMS = [(c, True) for c in SINGLE_CHANNEL_CASES] + [(c, False) for c in ONEDNN_SINGLE_CHANNEL_CASES]


@needs_onednn
@pytest.mark.parametrize(("case", "direct"), SINGLE_CHANNEL_PARAMS)
def test_direct_kernel_gradients_match_lax_and_the_primitive(rng, monkeypatch, case, direct):
  """With and without the bias's gradient, on the loops exactly where their rule says."""
  g = _geometry(case)
  x, _, dy = _operands(rng, g)
  calls = [
    jax.jit(lambda x, dy: (onednn.kernel_grad(x, dy, g),)),
    jax.jit(lambda x, dy: onednn.kernel_grad_bias(x, dy, g)),
  ]
  ours = _counting_direct_calls(lambda: [np.asarray(a) for call in calls for a in call(x, dy)])
  monkeypatch.setenv(onednn.DIRECT_ENV, "0")
  primitive = [np.asarray(a) for call in calls for a in call(x, dy)]
  want = [_lax_kernel_grad(x, dy, g)] * 2 + [jnp.sum(dy, axis=(0, 1, 2))]
  for got in (ours.results, primitive):
    for a, b in zip(got, want, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)  # sums of up to 2,400 unit normal products
  assert ours.direct_calls == (2 if direct and LOOPS else 0)


@needs_onednn
@pytest.mark.parametrize(("case", "direct"), SINGLE_CHANNEL_PARAMS)
def test_direct_forwards_match_lax_and_the_primitive(rng, monkeypatch, case, direct):
  """With and without a bias, on the loops exactly where their rule says."""
  g = _geometry(case)
  x, w, _ = _operands(rng, g)
  b = jnp.asarray(rng.standard_normal(g.out_channels), jnp.float32)
  calls = [jax.jit(lambda x, w, b: onednn.forward(x, w, g)), jax.jit(lambda x, w, b: onednn.forward_bias(x, w, b, g))]
  ours = _counting_direct_calls(lambda: [np.asarray(call(x, w, b)) for call in calls])
  monkeypatch.setenv(onednn.DIRECT_ENV, "0")
  primitive = [np.asarray(call(x, w, b)) for call in calls]
  want = [_lax(x, w, g), _lax(x, w, g) + b]
  for got in (ours.results, primitive):
    for a, c in zip(got, want, strict=True):
      np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)  # sums of up to 25 unit normal products
  assert ours.direct_calls == (2 if direct and LOOPS else 0)


def _concurrently(run: Callable[[], list[np.ndarray]], threads: int = 3, calls: int = 3) -> list[list[np.ndarray]]:
  """Every result of ``run()``, called ``calls`` times on each of ``threads`` Python threads at once."""
  results: list[list[np.ndarray]] = []
  workers = [threading.Thread(target=lambda: results.extend(run() for _ in range(calls))) for _ in range(threads)]
  for t in workers:
    t.start()
  for t in workers:
    t.join()
  assert len(results) == threads * calls
  return results


@needs_onednn
def test_direct_loops_give_the_same_bits_on_any_threads(rng, monkeypatch):
  """The direct loops share a batch's chunks between the calling thread, XLA's pool and calls waiting for their
  turn; each chunk writes its own rows or partial sums (added in chunk order), so one thread, the whole pool,
  concurrent calls and one program with both (independent) calls agree."""
  gx = _geometry(((37, 14, 14, 6), (5, 5, 6, 16), {}))  # LeNet's conv2: 5 chunks of 8, the last one short
  gw = _geometry(((37, 28, 28, 1), (5, 5, 1, 6), {"padding": 2}))  # LeNet's conv1
  _, w, dy = _operands(rng, gx)
  x, _, dyw = _operands(rng, gw)

  def run() -> list[np.ndarray]:
    return [np.asarray(a) for a in (onednn.input_grad(dy, w, gx), *onednn.kernel_grad_bias(x, dyw, gw))]

  pooled = run()
  np.testing.assert_allclose(pooled[0], _lax_input_grad(dy, w, gx), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(pooled[1], _lax_kernel_grad(x, dyw, gw), rtol=1e-5, atol=1e-2)  # 29,008 terms
  np.testing.assert_allclose(pooled[2], jnp.sum(dyw, axis=(0, 1, 2)), rtol=1e-5, atol=1e-2)
  concurrent = _concurrently(run)
  both = jax.jit(lambda dy, w, x, dyw: (onednn.input_grad(dy, w, gx), *onednn.kernel_grad_bias(x, dyw, gw)))
  together = [np.asarray(a) for a in both(dy, w, x, dyw)]
  monkeypatch.setenv(onednn.THREADS_ENV, "1")  # the calling thread alone
  single = run()
  for got in [*concurrent, together, single]:
    assert all(np.array_equal(a, b) for a, b in zip(got, pooled, strict=True))


@needs_onednn
def test_small_problems_split_along_the_batch_match_lax(rng, monkeypatch):
  """Small float32 problems run as one single-threaded primitive per part of the batch (uneven parts here),
  on the calling thread and XLA's pool; the kernel gradient adds the parts' partial sums in order."""
  g = _geometry(((37, 14, 14, 16), (5, 5, 16, 16), {"padding": 1}))  # 16 input channels: no direct loops
  x, w, dy = _operands(rng, g)
  b = jnp.asarray(rng.standard_normal(g.out_channels), jnp.float32)

  def run() -> list[np.ndarray]:
    calls = (onednn.forward_bias(x, w, b, g), onednn.input_grad(dy, w, g), *onednn.kernel_grad_bias(x, dy, g))
    return [np.asarray(a) for a in calls]

  want = [_lax(x, w, g) + b, _lax_input_grad(dy, w, g), _lax_kernel_grad(x, dy, g), jnp.sum(dy, axis=(0, 1, 2))]
  split = run()
  monkeypatch.setenv(onednn.SPLIT_ENV, "0")  # read by the extension on every call
  whole = run()
  for got in (split, whole):
    for a, c, atol in zip(got, want, (1e-4, 1e-4, 1e-2, 1e-3), strict=True):
      np.testing.assert_allclose(a, c, rtol=1e-5, atol=atol)
  # The parts' sums round differently from one primitive's over the whole batch: the split ran.
  assert not np.array_equal(split[2], whole[2]) and not np.array_equal(split[3], whole[3])
  monkeypatch.delenv(onednn.SPLIT_ENV)
  for got in _concurrently(run):
    assert all(np.array_equal(a, c) for a, c in zip(got, split, strict=True))


@needs_onednn
def test_direct_loops_under_vmap(rng):
  """vmapped operands reach the extension as leading axes, one direct call per member."""
  g = _geometry(DIRECT_CASES[2])
  _, w, dy = _operands(rng, g)
  dys, ws = jnp.stack([dy, -2 * dy]), jnp.stack([w, 0.5 * w])
  for in_axes, a, b in [((0, None), dys, w), ((0, 0), dys, ws)]:
    got = jax.jit(jax.vmap(lambda p, q: onednn.input_grad(p, q, g), in_axes=in_axes))(a, b)
    want = jax.vmap(lambda p, q: _lax_input_grad(p, q, g), in_axes=in_axes)(a, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  g = _geometry(SINGLE_CHANNEL_CASES[1])
  x, _, dy = _operands(rng, g)
  xs, dys = jnp.stack([x, x + 1]), jnp.stack([dy, -dy])
  got = jax.jit(jax.vmap(lambda p, q: onednn.kernel_grad(p, q, g)))(xs, dys)
  want = jax.vmap(lambda p, q: _lax_kernel_grad(p, q, g))(xs, dys)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}*{c[1]}")
def test_bias_functions_match_lax(rng, case):
  """forward_bias adds b inside the forward primitive; kernel_grad_bias also gives dy's sum (oneDNN's diff_bias)."""
  g = _geometry(case)
  x, w, dy = _operands(rng, g)
  b = jnp.asarray(rng.standard_normal(g.out_channels), jnp.float32)
  jit = jax.jit(lambda f, *a: f(*a, g), static_argnums=0)
  np.testing.assert_allclose(jit(onednn.forward_bias, x, w, b), _lax(x, w, g) + b, rtol=1e-5, atol=1e-5)
  dw, db = jit(onednn.kernel_grad_bias, x, dy)
  np.testing.assert_allclose(dw, _lax_kernel_grad(x, dy, g), rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(db, dy.sum(axis=tuple(range(dy.ndim - 1))), rtol=1e-5, atol=1e-4)


@needs_onednn
def test_bias_and_its_gradient_come_from_the_kernel_calls(rng):
  """jc.conv(x, w, b, impl="onednn"): no XLA add in the forward, no XLA reduction for b's gradient.

  The compiled programs call the fused targets; the same calls on lax add and reduce (the check
  can fail).
  """
  import jaxconv as jc

  x = jnp.asarray(rng.standard_normal((4, 12, 12, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((5, 5, 3, 6)), jnp.float32)
  b = jnp.asarray(rng.standard_normal(6), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((4, 12, 12, 6)), jnp.float32)
  for impl, fused in (("onednn", True), ("lax", False)):
    f = lambda x, w, b, impl=impl: jc.conv(x, w, b, padding=2, impl=impl)
    forward = jax.jit(f).lower(x, w, b).compile().as_text()
    backward = jax.jit(lambda x, w, b, ct, f=f: jax.vjp(f, x, w, b)[1](ct)).lower(x, w, b, ct).compile().as_text()
    assert ("jaxconv_onednn_forward_bias" in forward) == fused, impl
    assert ("jaxconv_onednn_backward_weights_bias" in backward) == fused, impl
    assert (" reduce(" not in backward) == fused, impl
    got = jax.vjp(f, x, w, b)[1](ct)
    want = jax.vjp(lambda x, w, b: _lax(x, w, _geometry(((4, 12, 12, 3), (5, 5, 3, 6), {"padding": 2}))) + b, x, w, b)
    for a, e in zip(got, want[1](ct)):
      np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


@needs_onednn
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0)], ids=["first", "second", "both"])
@pytest.mark.parametrize("which", ["forward", "input_grad", "kernel_grad"])
def test_vmap_matches_lax(rng, which, in_axes):
  # One spatial rank per function, to keep the grid small: all three ranks get vmapped.
  g = _geometry({"forward": CASES[4], "input_grad": CASES[8], "kernel_grad": CASES[1]}[which])
  x, w, dy = _operands(rng, g)
  fn, ref, (a, b) = {
    "forward": (onednn.forward, _lax, (x, w)),
    "input_grad": (onednn.input_grad, _lax_input_grad, (dy, w)),
    "kernel_grad": (onednn.kernel_grad, _lax_kernel_grad, (x, dy)),
  }[which]
  # Three different members per batched operand.
  a = jnp.stack([a, -2 * a, a + 1]) if in_axes[0] == 0 else a
  b = jnp.stack([b, 0.5 * b, b - 1]) if in_axes[1] == 0 else b
  got = jax.jit(jax.vmap(lambda p, q: fn(p, q, g), in_axes=in_axes))(a, b)
  want = jax.vmap(lambda p, q: ref(p, q, g), in_axes=in_axes)(a, b)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)


@needs_onednn
def test_nested_vmap_broadcasts_size_one_axes(rng):
  g = _geometry(CASES[3])
  x, w, _ = _operands(rng, g)
  xs = jnp.stack([x, 2 * x])
  ws = jnp.stack([w, -w, 3 * w])
  # Outer over w, inner over x: each operand is batched on one of the two leading axes.
  got = jax.vmap(lambda w: jax.vmap(lambda x: onednn.forward(x, w, g))(xs))(ws)
  want = jax.vmap(lambda w: jax.vmap(lambda x: _lax(x, w, g))(xs))(ws)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)


@needs_onednn
def test_concurrent_calls_do_not_share_scratch_memory(rng):
  # XLA runs independent custom calls on several threads at once (dx and dw of one step, say);
  # primitives sharing oneDNN's library-managed scratchpad crashed or corrupted each other there.
  g = _geometry(CASES[4])
  x, _, dy = _operands(rng, g)
  want = np.asarray(_lax_kernel_grad(x, dy, g))
  step = jax.jit(lambda x, dy: [onednn.kernel_grad(x * s, dy, g) / s for s in (1.0, 2.0, 4.0)])
  jax.block_until_ready(step(x, dy))
  errors: list[float] = []

  def work():
    for _ in range(10):
      errors.extend(float(np.abs(np.asarray(dw) - want).max()) for dw in step(x, dy))

  threads = [threading.Thread(target=work) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(errors) == 90 and max(errors) < 1e-4


@needs_onednn
def test_thread_cap_gives_the_same_values(rng, monkeypatch):
  g = _geometry(CASES[4])
  x, w, _ = _operands(rng, g)
  omp_threads = ctypes.CDLL(None).omp_get_max_threads  # libgomp, loaded globally with libdnnl
  before = omp_threads()
  monkeypatch.setenv(onednn.THREADS_ENV, "1")
  np.testing.assert_allclose(onednn.forward(x, w, g), _lax(x, w, g), rtol=1e-5, atol=1e-5)
  # The cap lasts one call: the calling thread's OpenMP count is put back (a cap left behind changed
  # a later training run's metrics in the same process).
  assert omp_threads() == before
  monkeypatch.setenv(onednn.THREADS_ENV, "many")
  with pytest.raises(ValueError, match=onednn.THREADS_ENV):
    onednn.forward(x, w, g)


_LAYOUT_CHECK = """
import numpy as np, jax, jax.numpy as jnp
from tests.test_onednn import CASES, _geometry, _lax, _lax_input_grad, _lax_kernel_grad, _operands
from jaxconv.kernels import onednn
rng = np.random.default_rng(0)
for case in (CASES[3], CASES[4], CASES[8]):
  g = _geometry(case)
  x, w, dy = _operands(rng, g)
  pairs = [(onednn.forward(x, w, g), _lax(x, w, g)), (onednn.input_grad(dy, w, g), _lax_input_grad(dy, w, g)),
           (onednn.kernel_grad(x, dy, g), _lax_kernel_grad(x, dy, g))]
  print(max(float(jnp.max(jnp.abs(a - b)) / (1 + jnp.max(jnp.abs(b)))) for a, b in pairs))
"""


@pytest.mark.slow
@needs_onednn
@pytest.mark.parametrize("layout", ["channels_last", "blocked", "tune"])
def test_each_activation_layout_gives_lax_values(layout):
  """Forward and both transposes with the layout fixed (one process each: the choice is made per process)."""
  env = {**os.environ, onednn.LAYOUT_ENV: layout}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _LAYOUT_CHECK], env=env, cwd=root, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  errors = [float(line) for line in out.stdout.split()]
  assert len(errors) == 3 and max(errors) < 1e-5, errors


def test_layout_setting_is_checked(rng, monkeypatch):
  g = _geometry(CASES[0])
  monkeypatch.setenv(onednn.LAYOUT_ENV, "nhwc")
  with pytest.raises(ValueError, match=onednn.LAYOUT_ENV):
    onednn.forward(jnp.ones(g.x_shape), jnp.ones(g.w_shape), g)


@needs_onednn
def test_unsupported_dtypes_and_ranks_are_refused_with_a_reason():
  assert "float64" in onednn.supports_onednn(conv_geometry((1, 8, 8, 2), (3, 3, 2, 2), "float64"))
  # bfloat16 is served on every CPU: natively, or in float32 (float32_fallback gives why).
  g = conv_geometry((1, 8, 8, 2), (3, 3, 2, 2), jnp.bfloat16)
  assert onednn.supports_onednn(g) is None
  x, w = jnp.ones(g.x_shape, jnp.bfloat16), jnp.ones(g.w_shape, jnp.bfloat16)
  np.testing.assert_allclose(onednn.forward(x, w, g).astype(jnp.float32), 18.0)


@needs_onednn
@pytest.mark.parametrize("native", [True, False])
def test_16_bit_problems_run_in_float32_where_the_cpu_has_no_instructions_for_them(rng, monkeypatch, native):
  """Without bf16 instructions (or where oneDNN refuses bf16) every op widens to float32 and rounds back:
  the bits of the float32 ops on the widened operands, rounded; with them, oneDNN's own bf16 code where it has it."""
  monkeypatch.setattr(onednn, "native_dtype", lambda dtype: native)
  g = conv_geometry((4, 10, 10, 6), (3, 3, 6, 32), jnp.bfloat16, padding=1)  # not narrow: widened only here
  g32 = conv_geometry((4, 10, 10, 6), (3, 3, 6, 32), jnp.float32, padding=1)
  reason = onednn.float32_fallback(g)
  refused = onednn._probe(g)  # oneDNN's own word on bfloat16 here (None where the CPU has it)
  assert reason == ("this CPU has no bfloat16 instructions (none of avx512_bf16, amx_bf16)" if not native else refused)
  assert onednn.float32_fallback(g32) is None
  assert onednn.supports_onednn(g) is None
  x, dy = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in (g.x_shape, g.out_shape))
  w = jnp.asarray(rng.standard_normal(g.w_shape), jnp.bfloat16)
  ops = {
    "forward": (lambda x, w, dy, g: onednn.forward(x, w, g)),
    "input_grad": (lambda x, w, dy, g: onednn.input_grad(dy, w, g)),
    "kernel_grad": (lambda x, w, dy, g: onednn.kernel_grad(x, dy, g)),
  }
  for name, op in ops.items():
    jaxpr = str(jax.make_jaxpr(functools.partial(op, g=g))(x, w, dy))
    assert ("f32[" in jaxpr) == (reason is not None), name
    got = op(x, w, dy, g)
    assert got.dtype == jnp.bfloat16, name
    if reason is not None:
      wide = [a.astype(jnp.float32) for a in (x, w, dy)]
      want = np.asarray(op(*wide, g32).astype(jnp.bfloat16)).view(np.uint16)
      np.testing.assert_array_equal(np.asarray(got).view(np.uint16), want, err_msg=name)


@pytest.mark.parametrize(("c_out", "narrow"), [(6, True), (16, True), (32, False)])
def test_16_bit_kernel_gradients_of_narrow_outputs_run_in_float32(rng, c_out, narrow):
  """bf16 backward-weights with <= 16 outputs per group converts to float32 (oneDNN's own is slow there)."""
  g = conv_geometry((4, 10, 10, 6), (3, 3, 6, c_out), jnp.bfloat16, padding=1)
  assert onednn.narrow_16bit_kernel_grad(g) == narrow
  assert not onednn.narrow_16bit_kernel_grad(conv_geometry((4, 10, 10, 6), (3, 3, 6, c_out), jnp.float32))
  x = jnp.asarray(rng.standard_normal(g.x_shape), jnp.bfloat16)
  dy = jnp.asarray(rng.standard_normal(g.out_shape), jnp.bfloat16)
  jaxpr = str(jax.make_jaxpr(lambda x, dy: onednn.kernel_grad(x, dy, g))(x, dy))
  # float32 operands only on the narrow path, or everywhere where the CPU has no bfloat16 instructions
  assert ("f32[" in jaxpr) == (narrow or onednn.float32_fallback(g) is not None)
  if onednn.supports_onednn(g) is None:
    want = np.asarray(_lax_kernel_grad(x.astype(jnp.float32), dy.astype(jnp.float32), g))
    got = np.asarray(onednn.kernel_grad(x, dy, g).astype(jnp.float32))
    np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())
    dw, db = onednn.kernel_grad_bias(x, dy, g)
    assert dw.dtype == db.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(dw.astype(jnp.float32)), want, atol=1e-2 * np.abs(want).max())
    sums = np.asarray(dy.astype(jnp.float32)).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(db.astype(jnp.float32)), sums, atol=1e-2 * np.abs(sums).max())


@pytest.mark.parametrize(
  ("c_in", "c_out", "in_float32", "loops"),
  [(1, 6, True, True), (1, 16, True, False), (1, 32, False, False), (2, 6, False, False)],
)
def test_16_bit_forwards_from_one_channel_run_in_float32(rng, c_in, c_out, in_float32, loops):
  """bf16 forward from one input channel into <= 16 outputs computes in float32: on the single-channel loops,
  which take bfloat16 operands themselves, or on float32 operands (without the loops, and into 16 outputs)."""
  g = conv_geometry((4, 12, 12, c_in), (5, 5, c_in, c_out), jnp.bfloat16, padding=2)
  assert onednn.single_channel_16bit_forward(g) == in_float32
  assert not onednn.single_channel_16bit_forward(conv_geometry((4, 12, 12, c_in), (5, 5, c_in, c_out), jnp.float32))
  native = loops and LOOPS
  assert onednn._direct(g, "forward") == native
  x = jnp.asarray(rng.standard_normal(g.x_shape), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal(g.w_shape), jnp.bfloat16)
  b = jnp.asarray(rng.standard_normal(c_out), jnp.float32)
  jaxpr = str(jax.make_jaxpr(lambda x, w: onednn.forward(x, w, g))(x, w))
  widened = (in_float32 and not native) or onednn.float32_fallback(g) is not None
  assert ("f32[" in jaxpr) == widened  # float32 operands only where widened here
  if onednn.supports_onednn(g) is None:
    want = np.asarray(_lax(x.astype(jnp.float32), w.astype(jnp.float32), g))
    for got in (onednn.forward(x, w, g), onednn.forward_bias(x, w, b, g) - b.astype(jnp.bfloat16)):
      assert got.dtype == jnp.bfloat16
      np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), want, atol=2e-2 * np.abs(want).max())


@needs_onednn
@pytest.mark.parametrize("case", SINGLE_CHANNEL_CASES[:4])
def test_bfloat16_single_channel_forwards_give_the_float32_bits_rounded(rng, monkeypatch, case):
  """Where the loops take bfloat16 operands, they widen them exactly and round y once, to nearest even
  as XLA's convert does: the bits of the float32 call on the widened operands, rounded (NaN and inf included);
  with the loops off, the same from the widened float32 problem."""
  x_shape, w_shape, kwargs = case
  g = conv_geometry(x_shape, w_shape, jnp.bfloat16, **kwargs)
  g32 = _geometry(case)
  x = rng.standard_normal(x_shape).astype(np.float32)
  x[0, 0, 0, 0], x[-1, -1, -1, 0] = np.nan, np.inf  # a NaN's and an inf's neighbourhoods
  x, w = (jnp.asarray(a, jnp.bfloat16) for a in (x, rng.standard_normal(w_shape)))
  b = jnp.asarray(rng.standard_normal(g.out_channels), jnp.float32)
  wide = lambda a: a.astype(jnp.float32)
  for direct in ("1", "0"):  # read per call by the extension, and when a call is traced
    monkeypatch.setenv(onednn.DIRECT_ENV, direct)
    want = [onednn.forward(wide(x), wide(w), g32), onednn.forward_bias(wide(x), wide(w), b, g32)]
    want = [np.asarray(a.astype(jnp.bfloat16)).view(np.uint16) for a in want]
    assert np.isnan(want[0].view(jnp.bfloat16).astype(np.float32)).any()
    got = [onednn.forward(x, w, g), onednn.forward_bias(x, w, b, g)]
    assert all(a.dtype == jnp.bfloat16 for a in got)
    assert [np.array_equal(np.asarray(a).view(np.uint16), c) for a, c in zip(got, want, strict=True)] == [True, True]


def test_wait_policy_is_set_for_the_load_only(monkeypatch):
  monkeypatch.delenv(onednn.WAIT_POLICY_ENV, raising=False)
  onednn._load.__wrapped__()
  assert onednn.WAIT_POLICY_ENV not in os.environ
  monkeypatch.setenv(onednn.WAIT_POLICY_ENV, "active")
  onednn._load.__wrapped__()
  assert os.environ[onednn.WAIT_POLICY_ENV] == "active"


def test_missing_library_is_reported(monkeypatch):
  monkeypatch.setenv(onednn.LIBRARY_ENV, "/nonexistent/libdnnl.so.3")
  reason = onednn._load.__wrapped__()
  assert isinstance(reason, str)
  assert "libdnnl.so.3 could not be loaded" in reason and "pip install onednn-cpu-gomp" in reason


def test_missing_extension_is_reported(monkeypatch):
  if _REASON is not None and "libdnnl" in _REASON:
    pytest.skip(f"no library to get past: {_REASON}")
  monkeypatch.setenv(onednn.EXTENSION_ENV, "/nonexistent/_onednn.so")
  reason = onednn._load.__wrapped__()
  assert isinstance(reason, str) and "extension" in reason and "/nonexistent/_onednn.so" in reason


def test_unavailable_kernel_refuses_every_call(monkeypatch):
  monkeypatch.setattr(onednn, "_load", lambda: "libdnnl.so.3 could not be loaded (test)")
  g = _geometry(CASES[0])
  assert onednn.supports_onednn(g) == "libdnnl.so.3 could not be loaded (test)"
  with pytest.raises(RuntimeError, match="unavailable"):
    onednn.forward(jnp.ones(g.x_shape), jnp.ones(g.w_shape), g)


def test_import_succeeds_without_the_library():
  code = (
    "import jaxconv, jaxconv.kernels.onednn as k; from jaxconv.geometry import conv_geometry; "
    "print(k.supports_onednn(conv_geometry((1, 4, 1), (2, 1, 1), 'float32')))"
  )
  env = dict(os.environ, **{onednn.LIBRARY_ENV: "/nonexistent/libdnnl.so.3"})
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
  assert "could not be loaded" in out.stdout


@needs_onednn
def test_where_onednn_refuses_bfloat16_it_runs_in_float32_and_auto_keeps_it():
  # oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA, read when it loads) has no bfloat16 convolution: the
  # kernel gives the reason (the CPU's, where it has no bfloat16 instructions either, else oneDNN's
  # refusal) and computes in float32, and auto still runs LeNet's conv2 on it.
  code = (
    "import jax.numpy as jnp; from jaxconv.geometry import conv_geometry; from jaxconv.kernels import auto, onednn; "
    "g = conv_geometry((8, 14, 14, 6), (5, 5, 6, 16), jnp.bfloat16); "
    "print(onednn.float32_fallback(g)); print(onednn.supports_onednn(g), auto.choose(g))"
  )
  env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
  reason, served = out.stdout.strip().splitlines()[-2:]
  assert "bfloat16" in reason and ("oneDNN has no implementation" in reason or "instructions" in reason)
  assert served == "None onednn"
