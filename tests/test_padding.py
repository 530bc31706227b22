"""Padding resolution and output_shape: the conventions table, and shapes the functions return."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax
from references import IMPLS, refusal

import jaxconv as jc
from jaxconv._checks import normalize_ints
from jaxconv.geometry import output_size, resolve_padding


@pytest.mark.parametrize(
  "padding, n, k, stride, dilation, scipy_pads, lax_pads",
  [
    ("valid", 10, 4, 1, 1, (0, 0), (0, 0)),
    ("full", 10, 4, 1, 1, (3, 3), (3, 3)),
    ("full", 10, 2, 1, 3, (3, 3), (3, 3)),  # dilated extent 4
    ("same", 10, 3, 1, 1, (1, 1), (1, 1)),
    ("same", 10, 4, 1, 1, (2, 1), (1, 2)),  # even kernel: the extra pad goes low (scipy), high (lax)
    ("same", 10, 2, 1, 2, (1, 1), (1, 1)),  # dilated extent 3 is odd again
    ("same", 10, 3, 3, 1, (1, 1), (1, 1)),  # lax: ceil(10 / 3) = 4 outputs need 2 pads in all
    ("same", 10, 3, 4, 1, (1, 1), (0, 1)),  # lax: 3 outputs need 1 pad; scipy ignores the stride
    ("same", 9, 1, 2, 1, (0, 0), (0, 0)),
  ],
)
def test_mode_strings(padding: str, n: int, k: int, stride: int, dilation: int, scipy_pads, lax_pads):
  """The table in jaxconv.geometry's docstring, for one axis."""
  for convention, pads in (("scipy", scipy_pads), ("lax", lax_pads)):
    assert resolve_padding(padding, (n,), (k,), stride, dilation, convention=convention) == (pads,), convention


@pytest.mark.parametrize(
  "padding, expected",
  [
    (2, ((2, 2), (2, 2))),
    (np.int64(1), ((1, 1), (1, 1))),
    ((1, 3), ((1, 1), (3, 3))),  # per-axis ints pad both sides of their axis
    ([(0, 2), (3, 1)], ((0, 2), (3, 1))),
    ("SAME", ((1, 1), (1, 1))),
  ],
)
def test_explicit_forms(padding, expected):
  """Ints, per-axis ints and (lo, hi) pairs mean the same in both conventions."""
  for convention in ("scipy", "lax"):
    assert resolve_padding(padding, (6, 6), (3, 3), convention=convention) == expected


def test_output_size_formula():
  """``floor((n + lo + hi - d (k - 1) - 1) / s) + 1`` on a few hand-checked numbers."""
  assert output_size(28, 5, (2, 2)) == 28
  assert output_size(14, 5, (0, 0)) == 10
  assert output_size(10, 3, (1, 1), 2) == 5
  assert output_size(10, 3, (0, 0), 1, 4) == 2  # extent 9
  assert output_size(7, 2, (0, 0), 3) == 2  # the last cell is dropped


axis_ints = st.integers(1, 3)


@st.composite
def geometries(draw) -> tuple:
  """Random (spatial, kernel, padding, stride, dilation) of rank 1-3, in every padding form."""
  rank = draw(st.integers(1, 3))
  per_axis = lambda values: st.lists(values, min_size=rank, max_size=rank)
  spatial = tuple(draw(per_axis(st.integers(1, 9))))
  kernel = tuple(draw(per_axis(st.integers(1, 4))))
  padding = draw(
    st.one_of(
      st.sampled_from(("valid", "same", "full")),
      st.integers(0, 3),
      per_axis(st.integers(0, 3)),
      per_axis(st.tuples(st.integers(0, 3), st.integers(0, 3))),
    )
  )
  stride = draw(st.one_of(axis_ints, per_axis(axis_ints)))
  dilation = draw(st.one_of(axis_ints, per_axis(axis_ints)))
  return spatial, kernel, padding, stride, dilation


@settings(max_examples=200, deadline=None)
@given(geometries())
def test_lax_same_is_lax_padtype_to_pads(geometry):
  """lax-style "same" is lax's "SAME" for the dilated kernel; scipy's puts the extra pad low."""
  spatial, kernel, _, stride, dilation = geometry
  strides = normalize_ints(stride, len(spatial), "stride")
  dilations = normalize_ints(dilation, len(spatial), "dilation")
  extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
  ours = resolve_padding("same", spatial, kernel, stride, dilation, convention="lax")
  assert list(ours) == [tuple(p) for p in lax.padtype_to_pads(spatial, extent, strides, "SAME")]
  for (lo, hi), e in zip(resolve_padding("same", spatial, kernel, stride, dilation, convention="scipy"), extent):
    assert lo + hi == e - 1 and lo - hi in (0, 1)


def abstract(*shape: int) -> jax.ShapeDtypeStruct:
  """A float32 array shape for jax.eval_shape (traced, never compiled)."""
  return jax.ShapeDtypeStruct(shape, np.float32)


@settings(max_examples=50, deadline=None)
@given(geometries())
def test_output_shape_is_what_the_functions_return(geometry):
  """output_shape equals the shape of conv (every impl), correlate, convolve and the pools, or all raise."""
  spatial, kernel, padding, stride, dilation = geometry
  conv_args = (abstract(2, *spatial, 3), abstract(*kernel, 3, 4))
  signal_args = (abstract(*spatial), abstract(*kernel))
  geometry = dict(padding=padding, stride=stride, dilation=dilation)
  try:
    out = jc.output_shape(spatial, kernel, **geometry)
  except ValueError:
    for fn, args in ((jc.conv, conv_args), (jc.correlate, signal_args)):
      with pytest.raises(ValueError):
        jax.eval_shape(functools.partial(fn, **geometry), *args)
    return
  for impl in IMPLS:
    if refusal(impl, conv_args[0].shape, conv_args[1].shape, **geometry) is None:
      assert jax.eval_shape(functools.partial(jc.conv, impl=impl, **geometry), *conv_args).shape == (2, *out, 4), impl
  for fn in (jc.correlate, jc.convolve):
    assert jax.eval_shape(functools.partial(fn, **geometry), *signal_args).shape == out
  pooled = jc.output_shape(spatial, kernel, padding, stride)
  pads = resolve_padding(padding, spatial, kernel, stride)
  window_sees_only_padding = any(max(pair) >= k for pair, k in zip(pads, kernel))
  for pool in (jc.max_pool, jc.avg_pool):
    pooled_fn = functools.partial(pool, window=kernel, stride=stride, padding=padding)
    if window_sees_only_padding:
      with pytest.raises(ValueError, match="^padding"):
        jax.eval_shape(pooled_fn, conv_args[0])
    else:
      assert jax.eval_shape(pooled_fn, conv_args[0]).shape == (2, *pooled, 3)


def test_output_shape_takes_plain_ints():
  """An int spatial size is one axis; an int kernel applies to every axis."""
  assert jc.output_shape(5, 3) == (3,)
  assert jc.output_shape((28, 28), 5, padding=2) == (28, 28)
  assert jc.output_shape((9, 10), 2, "same", 2) == (5, 5)
