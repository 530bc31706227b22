"""Kernel-specific behaviour: batch chunking and its memory bound, the "auto" rule, the FFT error
bound, Winograd's applicability and tile sizes, supports() refusals, and the benchmark harness.

Values and gradients of every kernel on the shared grid of cases are in test_conv.py; here the
reference is ``lax.conv_general_dilated`` called directly with explicit pads, or numpy in float64.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from references import LAX_DIMS, assert_close, random

import benchmarks as bench
import jaxconv as jc
from jaxconv import kernels
from jaxconv.geometry import ConvGeometry, conv_geometry
from jaxconv.kernels import auto, cpu, depthwise, fft, im2col, registry, taps, toeplitz, winograd
from jaxconv.kernels.cpu import isa_flags
from jaxconv.kernels.lax import conv_lax


def lax_reference(x, w, *, stride, pads, dilation=1, groups=1):
  """lax.conv_general_dilated in lax's own terms (explicit pads), at the highest precision."""
  rank = x.ndim - 2
  stride = (stride,) * rank if isinstance(stride, int) else stride
  dilation = (dilation,) * rank if isinstance(dilation, int) else dilation
  return lax.conv_general_dilated(
    x,
    w,
    stride,
    pads,
    rhs_dilation=dilation,
    dimension_numbers=LAX_DIMS[rank],
    feature_group_count=groups,
    precision=lax.Precision.HIGHEST,
  )


def value_and_grads(conv, x, w, ct):
  """``conv(x, w)`` and the pullback of ``ct`` to (dx, dw), under jit."""

  def run(x, w, ct):
    y, pullback = jax.vjp(conv, x, w)
    return y, pullback(ct)

  return jax.jit(run)(x, w, ct)


def assert_matches_lax(impl: str, x, w, rtol: float = 1e-5, **geometry):
  """``impl``'s value and gradients equal lax's for explicit-pad ``geometry`` (pads as pairs)."""
  pads = geometry.pop("pads")
  reference = functools.partial(
    lax_reference,
    stride=geometry.get("stride", 1),
    pads=pads,
    dilation=geometry.get("dilation", 1),
    groups=geometry.get("groups", 1),
  )
  (ct,) = random(np.random.default_rng(1), jax.eval_shape(reference, x, w).shape)
  mine = functools.partial(jc.conv, padding=pads, impl=impl, **geometry)
  y, (dx, dw) = value_and_grads(mine, x, w, ct)
  y_ref, (dx_ref, dw_ref) = value_and_grads(reference, x, w, ct)
  for what, a, b in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref)):
    assert_close(a, b, rtol, f"{impl} {what}")


# --------------------------------------------------------------------------------------------
# chunking and memory


@pytest.mark.parametrize(
  ("batch", "per_image", "budget", "expected"),
  [(32, 7, 30, 4), (32, 10, 1, 1), (12, 1, 100, 12), (7, 3, 10, 1), (6, 2, 7, 3)],
)
def test_batch_chunk_is_the_largest_fitting_divisor(batch, per_image, budget, expected):
  """Chunks divide the batch and fit the budget; at least one image per chunk."""
  assert taps.batch_chunk(batch, per_image, budget) == expected


@pytest.mark.parametrize("tap_gemm_min_depth", [1, 10**6], ids=["tap-by-tap", "patch-matrix"])
@pytest.mark.parametrize("budget", [1, 2**30], ids=["chunk-per-image", "one-chunk"])
def test_im2col_chunked_and_unchunked_match_lax(monkeypatch, rng, budget, tap_gemm_min_depth):
  """Every im2col path (chunked scan or not, one GEMM per tap or one patch GEMM) gives lax's gradients."""
  monkeypatch.setattr(im2col, "PATCH_BUDGET_BYTES", budget)
  monkeypatch.setattr(im2col, "TAP_GEMM_MIN_DEPTH", tap_gemm_min_depth)
  x, w = random(rng, (3, 9, 8, 4), (3, 2, 2, 6))
  assert_matches_lax("im2col", x, w, stride=(2, 1), pads=((1, 2), (0, 1)), dilation=(1, 2), groups=2)


@pytest.mark.slow  # 3.5 s on a 2-core AVX2 EPYC
def test_im2col_temporaries_stay_below_one_patch_matrix(monkeypatch):
  """With a small patch budget, forward and forward+backward temporaries stay far below the full patch matrix."""
  monkeypatch.setattr(im2col, "PATCH_BUDGET_BYTES", 2**20)
  shape = bench.Shape("mem", (8, 32, 32, 32), (3, 3, 32, 32), padding="same")
  x, w, _ = bench.random_inputs(shape)
  full_patches = 8 * 32 * 32 * 9 * 32 * 4
  for make in (bench.forward_fn, bench.train_step_fn):
    assert make(shape, "im2col").lower(x, w).compile().memory_analysis().temp_size_in_bytes < full_patches / 2


@pytest.mark.slow
def test_im2col_peak_memory_under_twice_lax_on_resnet_3x3():
  """Issue 4's bound on 32x56x56x64 -> 64 3x3: compiled peak memory < 2x lax's, forward and forward+backward."""
  ratios = bench.memory_ratio(bench.SHAPES_BY_NAME["resnet_3x3"], "im2col")
  assert ratios["fwd_ratio"] < 2 and ratios["fb_ratio"] < 2, ratios


def test_depthwise_chunked_kernel_gradient(monkeypatch, rng):
  """The kernel-gradient reductions give lax's result when split into one-image chunks."""
  monkeypatch.setattr(depthwise, "REDUCE_BUDGET_BYTES", 1)
  x, w = random(rng, (3, 7, 6, 4), (3, 3, 1, 8))
  assert_matches_lax("depthwise", x, w, stride=(1, 2), pads=((1, 1), (2, 0)), groups=4)


# --------------------------------------------------------------------------------------------
# auto


# Without the oneDNN kernel (not built or not loadable): the rule's fallbacks.
FALLBACK_CHOICES = {
  "lenet_conv1": "toeplitz",
  "lenet_conv2": "toeplitz",
  "resnet_3x3": "hybrid",
  "resnet_3x3_s2": "hybrid",
  "bottleneck_1x1": "im2col",
  "depthwise_3x3": "depthwise",
  "large_15x15": "fft",
  "conv1d_k5": "lax",
  "conv3d_3x3x3": "winograd",
  "grouped_3x3_g4": "im2col",
  "dilated_3x3_d2": "lax",
  "stem_7x7_s2": "lax",
  "cifar_5x5": "im2col",
}
# With it: fft (large kernels) keeps its shape, and lax 1-D unless the CPU has AVX-512; oneDNN takes the rest.
AVX512 = "avx512f" in isa_flags()
ONEDNN_CHOICES = {
  name: choice if choice == "fft" or (name == "conv1d_k5" and not AVX512) else "onednn"
  for name, choice in FALLBACK_CHOICES.items()
}
AUTO_CHOICES = ONEDNN_CHOICES if auto.onednn_serves(bench.SHAPES_BY_NAME["resnet_3x3"].spec()) else FALLBACK_CHOICES


def test_auto_rule_on_the_benchmark_shapes():
  """The documented rule picks the kernel the benchmark found fastest on each named shape."""
  assert {s.name: auto.choose(s.spec()) for s in bench.SHAPES} == AUTO_CHOICES


def test_auto_rule_without_onednn(monkeypatch):
  """Where the oneDNN kernel cannot run, the rule falls back to jaxconv's own kernels."""
  monkeypatch.setattr(auto, "onednn_serves", lambda spec: False)
  assert {s.name: auto.choose(s.spec()) for s in bench.SHAPES} == FALLBACK_CHOICES


def test_auto_leaves_dense_convs_to_lax_when_ynnpack_convolutions_are_off(monkeypatch):
  """With XLA's own (non-YNNPACK) convolutions and no oneDNN, the dense shapes go to lax; the others keep theirs."""
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  monkeypatch.setattr(auto, "onednn_serves", lambda spec: False)
  choices = {s.name: auto.choose(s.spec()) for s in bench.SHAPES}
  assert choices == {**FALLBACK_CHOICES, "resnet_3x3": "lax", "resnet_3x3_s2": "lax", "bottleneck_1x1": "lax"}


@pytest.mark.parametrize("flags", [("avx2",), ("avx2", "avx512f")])
def test_auto_runs_1d_on_onednn_only_with_avx512(monkeypatch, flags):
  """1-D convs go to oneDNN where the CPU has AVX-512 (and oneDNN serves them), to lax on AVX2."""
  monkeypatch.setattr(auto, "isa_flags", lambda: flags)
  monkeypatch.setattr(auto, "onednn_serves", lambda spec: True)
  assert auto.choose(bench.SHAPES_BY_NAME["conv1d_k5"].spec()) == ("onednn" if "avx512f" in flags else "lax")


@pytest.mark.parametrize(
  ("dtype", "flags", "native"),
  [
    (jnp.bfloat16, ("avx512f",), False),
    (jnp.bfloat16, ("avx512f", "avx512_bf16"), True),
    (jnp.bfloat16, ("amx_bf16",), True),
    (jnp.float16, ("avx512_bf16",), False),
    (jnp.float16, ("avx512_fp16",), True),
    (jnp.float32, (), True),
  ],
)
def test_native_dtype_reads_the_isa_flags(monkeypatch, dtype, flags, native):
  """16-bit floats are native only with one of their ISA flags; 32-bit ones always."""
  monkeypatch.setattr(cpu, "isa_flags", lambda: flags)
  assert cpu.native_dtype(dtype) == native


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_auto_runs_every_float_dtype_on_onednn_where_it_serves_the_call(monkeypatch, dtype):
  """Rule 3 does not ask for native 16-bit instructions: the oneDNN kernel computes in float32 without them."""
  monkeypatch.setattr(auto, "onednn_serves", lambda spec: True)
  assert auto.choose(bench.SHAPES_BY_NAME["lenet_conv2"].spec(dtype)) == "onednn"


def test_auto_runs_bf16_on_onednn_wherever_it_serves_the_call_on_this_cpu():
  """On this machine: oneDNN for bfloat16 exactly where it serves the call, natively or in float32."""
  spec = bench.SHAPES_BY_NAME["lenet_conv2"].spec(jnp.bfloat16)
  assert (auto.choose(spec) == "onednn") == auto.onednn_serves(spec)
  assert kernels.get(auto.choose(spec)).refusal(spec) is None


def specs_grid() -> list[ConvGeometry]:
  """Small specs over ranks, kernel sizes, channel counts, groups and strides."""
  specs = []
  for rank in (1, 2, 3):
    for k in (1, 3, 5):
      for c_in, c_out, groups in ((1, 6, 1), (8, 8, 8), (6, 16, 1), (64, 64, 1), (64, 128, 4), (8, 8, 1)):
        for stride in (1, 2):
          x, w = (2, *(11,) * rank, c_in), (*(k,) * rank, c_in // groups, c_out)
          specs.append(conv_geometry(x, w, jnp.float32, stride=stride, padding="same", dilation=1, groups=groups))
  return specs


def test_auto_only_chooses_kernels_that_accept_the_call():
  """Whatever the shapes, the chosen kernel is registered and its supports() accepts the spec."""
  for spec in specs_grid():
    choice = auto.choose(spec)
    assert kernels.get(choice).refusal(spec) is None, (choice, spec)


@pytest.mark.parametrize("name", ["large_15x15", "depthwise_3x3", "resnet_3x3"])
def test_auto_traces_to_the_chosen_kernel(name):
  """impl="auto" is the chosen kernel itself: the same program, no run-time decision."""
  shape = bench.SHAPES_BY_NAME[name]
  x = jax.ShapeDtypeStruct(shape.x, jnp.float32)
  w = jax.ShapeDtypeStruct(shape.w, jnp.float32)
  trace = lambda impl: str(jax.make_jaxpr(functools.partial(jc.conv, impl=impl, **shape.geometry()))(x, w))
  assert trace("auto") == trace(AUTO_CHOICES[name])


# --------------------------------------------------------------------------------------------
# FFT


def test_fast_length_is_the_next_5_smooth_number():
  """fast_length(n) is the smallest 2^a 3^b 5^c >= n."""
  smooth = [m for m in range(1, 200) if fft.is_smooth(m)]
  for n in range(1, 190):
    assert fft.fast_length(n) == min(m for m in smooth if m >= n)
  assert [fft.fast_length(n) for n in (7, 78, 97, 121)] == [8, 80, 100, 125]


def numpy_correlate(x: np.ndarray, w: np.ndarray, pads) -> np.ndarray:
  """Float64 stride-1 cross-correlation of x ``(N, H, W, C)`` with w ``(kh, kw, C, O)``, explicit pads."""
  xp = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
  kh, kw = w.shape[:2]
  windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))  # (N, oh, ow, C, kh, kw)
  return np.einsum("nhwcij,ijco->nhwo", windows, w.astype(np.float64))


def test_fft_error_is_within_its_stated_bound(rng):
  """A 15x15 float32 FFT conv is within FFT_RTOL (relative to max |y|) of the float64 result."""
  x, w = random(rng, (2, 40, 40, 3), (15, 15, 3, 4))
  pads = ((7, 7), (7, 7))
  y = jc.conv(x, w, padding=pads, impl="fft")
  exact = numpy_correlate(x, w, pads)
  err = np.max(np.abs(np.asarray(y, np.float64) - exact)) / np.max(np.abs(exact))
  lax_err = np.max(np.abs(np.asarray(lax_reference(x, w, stride=1, pads=pads), np.float64) - exact)) / np.max(
    np.abs(exact)
  )
  assert err <= fft.FFT_RTOL
  assert err <= 100 * max(lax_err, np.finfo(np.float32).eps)  # the same order as lax's own rounding


# --------------------------------------------------------------------------------------------
# Winograd


@pytest.mark.parametrize(
  ("w_shape", "geometry", "reason"),
  [
    ((5, 5, 2, 2), {}, "3-tap"),
    ((3, 1, 2, 2), {}, "3-tap"),
    ((3, 3, 2, 2), {"stride": 2}, "stride 1"),
    ((3, 3, 2, 2), {"dilation": (1, 2)}, "dilation 1"),
  ],
)
def test_winograd_refuses_what_it_cannot_do(w_shape, geometry, reason):
  """supports() names the reason, and jc.conv turns it into a ValueError naming the impl."""
  x = np.ones((1, 9, 9, 2), np.float32)
  spec = conv_geometry(
    x.shape, w_shape, np.float32, padding="valid", **{"stride": 1, "dilation": 1, "groups": 1, **geometry}
  )
  assert reason in winograd.supports_winograd(spec)
  with pytest.raises(ValueError, match="impl='winograd'"):
    jc.conv(x, np.ones(w_shape, np.float32), impl="winograd", **geometry)


@pytest.mark.parametrize("tile", [2, 4], ids=["F(2,3)", "F(4,3)"])
@pytest.mark.parametrize(
  ("x_shape", "w_shape", "pads"),
  [
    ((2, 9, 10, 4), (3, 3, 2, 6), ((3, 1), (2, 0))),
    ((3, 13, 5), (3, 5, 7), ((1, 1),)),
    ((1, 5, 6, 7, 3), (3, 3, 3, 3, 4), ((1, 1),) * 3),
  ],
  ids=["2d-grouped", "1d", "3d"],
)
def test_winograd_tiles_match_lax(monkeypatch, rng, tile, x_shape, w_shape, pads):
  """F(2,3) and F(4,3), any rank, ragged last tiles, groups: values and gradients equal lax's."""
  monkeypatch.setattr(winograd, "TILE", tile)
  monkeypatch.setattr(winograd, "TILE_BUDGET_BYTES", 1)  # one image per chunk
  x, w = random(rng, x_shape, w_shape)
  groups = x_shape[-1] // w_shape[-2]
  # F(4,3)'s transforms carry entries up to 8 and 1/24: a few more bits of rounding.
  assert_matches_lax("winograd", x, w, rtol={2: 1e-5, 4: 1e-4}[tile], pads=pads, groups=groups)


# --------------------------------------------------------------------------------------------
# Toeplitz (banded matrix)


@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (1, 2), (3, 2)])
def test_banded_matrix_holds_each_weight_once_on_its_band(rng, stride, dilation):
  """T[(p, c), (q, o)] is exactly w[j, c, o] where p = q * stride + j * dilation, and 0 elsewhere (numpy loop)."""
  (w,) = random(rng, (3, 2, 4))  # (k_w, C_in, C_out), one leading tap
  width = 11
  out = (width - dilation * 2 - 1) // stride + 1
  t = np.asarray(toeplitz.banded_matrix(w, width, out, stride, dilation)).reshape(width, 2, out, 4)
  expected = np.zeros_like(t)
  for q in range(out):
    for j in range(3):
      expected[q * stride + j * dilation, :, q, :] = np.asarray(w)[j]
  np.testing.assert_array_equal(t, expected)


def test_toeplitz_grouped_strided_dilated_and_forward_mode(rng):
  """Groups (a block-diagonal kernel), stride and dilation on both axes match lax, and jax.jvp works."""
  x, w = random(rng, (2, 9, 11, 4), (3, 2, 2, 6))
  geometry = dict(stride=(2, 3), dilation=(1, 2), groups=2)
  assert_matches_lax("toeplitz", x, w, pads=((1, 2), (0, 3)), **geometry)
  conv = lambda impl: functools.partial(jc.conv, padding=((1, 2), (0, 3)), impl=impl, **geometry)
  tangents = tuple(random(np.random.default_rng(2), x.shape, w.shape))
  assert_close(jax.jvp(conv("toeplitz"), (x, w), tangents)[1], jax.jvp(conv("lax"), (x, w), tangents)[1], 1e-5, "jvp")


def test_toeplitz_refuses_a_banded_matrix_past_its_budget():
  """A wide image with many channels is refused, naming the matrix size; auto does not pick it."""
  spec = bench.SHAPES_BY_NAME["resnet_3x3"].spec()
  assert "152 MiB" in toeplitz.supports_toeplitz(spec)
  with pytest.raises(ValueError, match=r"impl='toeplitz'.*banded matrix"):
    jc.conv(np.ones((1, 56, 56, 64), np.float32), np.ones((3, 3, 64, 64), np.float32), padding="same", impl="toeplitz")


# --------------------------------------------------------------------------------------------
# refusals


def test_depthwise_refuses_wide_groups():
  """More than MAX_GROUP_CHANNELS input channels per group is refused, naming the width."""
  x = np.ones((1, 6, 6, 16), np.float32)
  with pytest.raises(ValueError, match=r"impl='depthwise'.*C_in / groups"):
    jc.conv(x, np.ones((3, 3, 8, 4), np.float32), groups=2, impl="depthwise")


# --------------------------------------------------------------------------------------------
# the benchmark harness


@pytest.mark.slow  # 10 s on a 2-core AVX2 EPYC (its samples fill 20 ms each)
def test_bench_rows_and_report():
  """A tiny benchmark run checks against lax, times, and reports ratios, targets and the table."""
  shape = bench.Shape("tiny", (2, 6, 6, 8), (3, 3, 8, 4), padding="same")
  rows = bench.bench_shape(shape, ["lax", "im2col", "depthwise"], repeats=2, with_torch=False, max_call_ms=1e4)
  by_impl = {r["impl"]: r for r in rows}
  assert by_impl["lax"]["fb_speedup"] == 1.0
  assert max(by_impl["im2col"][k] for k in ("err_y", "err_dx", "err_dw")) < 1e-5
  assert by_impl["im2col"]["fwd_ms"] > 0 and math.isclose(
    by_impl["im2col"]["fb_gflops"], 3 * shape.spec().flops / by_impl["im2col"]["fb_ms"] / 1e6
  )
  assert by_impl["depthwise"]["skipped"].startswith("refused")
  summary = bench.summarize(rows, {})
  assert summary["per_shape"]["tiny"]["fastest"] in {"lax", "im2col"}
  table = bench.markdown(rows, summary, bench.environment())
  assert (
    "| tiny | im2col |" in table and "| tiny | " in "\n".join(bench.summary_table(summary)) and "XLA_FLAGS" in table
  )


@pytest.mark.slow  # 7 s: compiles lax and a kernel in bfloat16, forward, pullback and step
def test_bench_rows_in_bfloat16_give_every_kernel_bfloat16_operands(monkeypatch):
  """--dtype's path: each kernel is traced on operands of the dtype, and auto is asked in it."""
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  seen = set()

  @kernels.register("dtype_probe")
  def dtype_probe(x, w, g):
    seen.add((x.dtype, w.dtype, np.dtype(g.dtype)))
    return conv_lax(x, w, g)

  shape = bench.Shape("tiny", (2, 6, 6, 8), (3, 3, 8, 4), padding="same")
  bf16 = jnp.dtype(jnp.bfloat16)
  rows = bench.bench_shape(shape, ["lax", "dtype_probe"], repeats=1, with_torch=False, max_call_ms=1e4, dtype=bf16)
  assert seen == {(bf16, bf16, bf16)}
  assert max(rows[1][k] for k in ("err_y", "err_dx", "err_dw")) == 0.0  # lax's own values, in bfloat16 both
  assert bench.harness.auto_choices([shape], jnp.bfloat16) == {"tiny": auto.choose(shape.spec(jnp.bfloat16))}


def test_bench_samples_of_fast_calls_fill_the_minimum_time():
  """A sample of a fast call averages back-to-back calls filling ``min_sample_ms``; slow calls run once."""
  counts = {"fast": 0, "slow": 0}

  def fast():
    counts["fast"] += 1

  def slow():
    counts["slow"] += 1
    time.sleep(0.03)

  times = bench.time_interleaved({"fast": fast, "slow": slow}, repeats=2, min_sample_ms=5.0)
  assert counts["slow"] == 3 + 2  # three calls to size the sample, then one per repeat
  per_sample = bench.calls_per_sample(fast, 5.0)
  assert per_sample > 100 and counts["fast"] > 3 + 2 * 100
  assert all(t < 0.05 for t in times["fast"]) and all(t > 25 for t in times["slow"])
  assert bench.calls_per_sample(fast, 0.0) == 1


def test_bench_geomean_of_auto_over_target_shapes():
  """The summary's geometric mean is over the target shapes' lax / auto forward+backward ratios."""
  rows = [
    {"shape": name, "impl": "auto", "fb_ms": 1.0, "fb_speedup": s}
    for name, s in zip(bench.TARGET_SHAPES, (2, 8, 1, 1, 1, 1, 0.5))
  ]
  summary = bench.summarize(rows + [{"shape": "conv1d_k5", "impl": "auto", "fb_ms": 1.0, "fb_speedup": 100.0}], {})
  assert math.isclose(summary["target_geomean_auto_speedup"], 8 ** (1 / 7))
  assert summary["shapes_where_auto_is_slower_than_lax"] == [bench.TARGET_SHAPES[-1]]


def test_bench_rejects_unknown_names():
  """Unknown shape or impl names raise ValueError naming the flag."""
  with pytest.raises(ValueError, match="shapes"):
    bench.select_shapes(["nope"])
  with pytest.raises(ValueError, match="impl"):
    bench.select_impls(["nope"])
  assert bench.select_impls(["im2col"]) == ["lax", "im2col"]
