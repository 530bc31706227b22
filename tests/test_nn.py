"""jaxconv.nn: Conv and pooling layers against lax, their attributes, init scale and argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from references import LAX_DIMS, assert_close, random

import jaxconv as jc
from jaxconv import nn


@pytest.mark.parametrize(
  "rank, kwargs",
  [
    (1, dict(stride=2, padding="same")),
    (2, dict(padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2)),
    (3, dict(stride=(1, 2, 1), padding=1, use_bias=False)),
  ],
)
def test_conv_matches_lax(rng, rank, kwargs):
  layer = nn.Conv(4, 6, (3,) * rank, impl="lax", rngs=nnx.Rngs(0), **kwargs)
  (x,) = random(rng, (2, *(7,) * rank, 4))
  w = np.asarray(layer.kernel[...])
  assert w.shape == (3,) * rank + (4 // layer.groups, 6)
  pads = kwargs.get("padding", "valid")
  pads = [(pads, pads)] * rank if isinstance(pads, int) else pads
  expected = lax.conv_general_dilated(
      x, w, (kwargs.get("stride", 1),) * rank if isinstance(kwargs.get("stride", 1), int) else kwargs["stride"],
      pads.upper() if isinstance(pads, str) else pads,
      rhs_dilation=layer.dilation, dimension_numbers=LAX_DIMS[rank], feature_group_count=layer.groups,
  )  # fmt: skip
  if layer.bias is not None:
    expected = expected + np.asarray(layer.bias[...])
  assert_close(layer(x), expected, 1e-5, f"rank {rank}")


def test_conv_attributes_are_normalised():
  layer = nn.Conv(2, 4, (5, 3), stride=2, padding="same", dilation=(1, 2), rngs=nnx.Rngs(0))
  assert (layer.kernel_size, layer.stride, layer.dilation) == ((5, 3), (2, 2), (1, 2))
  assert (layer.padding, layer.groups, layer.impl, layer.bias[...].shape) == ("same", 1, None, (4,))


def test_int_kernel_size_takes_its_axes_from_a_per_axis_argument():
  """A bare int means every spatial axis; the number of axes comes from stride/dilation/padding, else it is refused."""
  assert nn.Conv(2, 4, 3, stride=(1, 2), rngs=nnx.Rngs(0)).kernel_size == (3, 3)
  assert nn.Conv(2, 4, 3, dilation=(1, 1, 2), rngs=nnx.Rngs(0)).kernel_size == (3, 3, 3)
  assert nn.Conv(2, 4, 5, padding=((2, 2),), rngs=nnx.Rngs(0)).kernel_size == (5,)
  assert nn.ConvTranspose(2, 4, 3, stride=(2, 2), rngs=nnx.Rngs(0)).kernel_size == (3, 3)
  for layer in (nn.Conv, nn.ConvTranspose):
    # flax.nnx.Conv would build a (3,) kernel here and run it over a 2-D input's last axis only.
    with pytest.raises(TypeError, match=r"kernel_size=3 is an int.*\(3, 3\) for images"):
      layer(2, 4, 3, stride=2, padding="same", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="^kernel_size must be >= 1"):
    nn.Conv(2, 4, 0, stride=(1, 1), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("layer", [nn.Conv, nn.ConvTranspose])
def test_call_errors_name_the_layer_arguments(layer):
  """A wrong input rank names kernel_size and the input's rank; wrong channels name in_features (not w)."""
  conv = layer(2, 4, (3,), rngs=nnx.Rngs(0))
  with pytest.raises(
    ValueError, match=r"kernel_size=\(3,\) \(1 spatial axis\).*got x of shape \(1, 5, 5, 2\) \(2 spatial"
  ):
    conv(jnp.ones((1, 5, 5, 2)))
  with pytest.raises(ValueError, match=r"in_features=2, so x's last axis must be 2; got x of shape \(1, 5, 3\)"):
    conv(jnp.ones((1, 5, 3)))


# (x dtype, dtype, param_dtype) -> the output dtype flax.nnx.Conv gives (promote_dtype's rule).
DTYPE_CASES = [
  (jnp.float32, None, jnp.float32),
  (jnp.bfloat16, None, jnp.float32),
  (jnp.float32, jnp.bfloat16, jnp.float32),
  (jnp.bfloat16, None, jnp.bfloat16),
  (jnp.float32, None, jnp.bfloat16),
  (jnp.bfloat16, jnp.float32, jnp.bfloat16),
  (jnp.float16, jnp.float16, jnp.float32),
]


def _tolerance(dtype) -> float:
  """bfloat16 keeps 8 bits and float16 11: a few units in the last place of the output's scale."""
  return {jnp.dtype(jnp.bfloat16): 3e-2, jnp.dtype(jnp.float16): 4e-3}.get(jnp.dtype(dtype), 1e-5)


@pytest.mark.parametrize("x_dtype, dtype, param_dtype", DTYPE_CASES)
@pytest.mark.parametrize("impl", ["lax", None])
def test_dtypes_match_flax_conv(rng, x_dtype, dtype, param_dtype, impl):
  """Same kernel values: outputs equal flax.nnx.Conv's and lax's, in flax's dtype; parameter grads in param_dtype."""
  kwargs = dict(padding=((1, 1), (0, 1)), dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  ours = nn.Conv(3, 5, (3, 2), stride=(1, 2), impl=impl, **kwargs)
  theirs = nnx.Conv(3, 5, (3, 2), strides=(1, 2), **kwargs)
  theirs.bias[...] = jnp.asarray(rng.standard_normal(5), param_dtype)
  ours.kernel[...], ours.bias[...] = theirs.kernel[...], theirs.bias[...]
  assert ours.kernel[...].dtype == ours.bias[...].dtype == jnp.dtype(param_dtype)
  (x,) = random(rng, (2, 7, 8, 3))
  x = jnp.asarray(x, x_dtype)
  y, expected = ours(x), theirs(x)
  assert y.dtype == expected.dtype
  assert y.dtype == (jnp.result_type(x_dtype, param_dtype) if dtype is None else jnp.dtype(dtype))
  # lax on the same casts, in float32: an independent reference for the values.
  cast = lambda a: np.asarray(jnp.asarray(a, y.dtype), np.float32)
  lax_y = lax.conv_general_dilated(
    cast(x), cast(theirs.kernel[...]), (1, 2), ((1, 1), (0, 1)), dimension_numbers=LAX_DIMS[2]
  ) + cast(theirs.bias[...])
  assert_close(y, lax_y, _tolerance(y.dtype), "vs lax")
  assert_close(y, expected, _tolerance(y.dtype), "vs flax")

  def loss(model):
    return jnp.sum(model(x).astype(jnp.float32) ** 2)

  grads, flax_grads = nnx.grad(loss)(ours), nnx.grad(loss)(theirs)
  assert grads["kernel"][...].dtype == grads["bias"][...].dtype == jnp.dtype(param_dtype)
  scale = _tolerance(y.dtype) * 4  # a sum over the whole batch: more roundings than one output
  assert_close(grads["kernel"][...], flax_grads["kernel"][...], scale, "kernel grad vs flax")
  assert_close(grads["bias"][...], flax_grads["bias"][...], scale, "bias grad vs flax")


@pytest.mark.parametrize("x_dtype, dtype, param_dtype", DTYPE_CASES[:4])
def test_conv_transpose_dtypes(rng, x_dtype, dtype, param_dtype):
  """ConvTranspose: parameters in param_dtype, output in flax's dtype, values of the float32 layer."""
  layer = nn.ConvTranspose(3, 2, (3, 3), stride=2, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  reference = nn.ConvTranspose(3, 2, (3, 3), stride=2, rngs=nnx.Rngs(0))
  reference.kernel[...] = jnp.asarray(layer.kernel[...], jnp.float32)
  (x,) = random(rng, (2, 4, 4, 3))
  x = jnp.asarray(x, x_dtype)
  y = layer(x)
  assert layer.kernel[...].dtype == jnp.dtype(param_dtype)
  assert y.dtype == (jnp.result_type(x_dtype, param_dtype) if dtype is None else jnp.dtype(dtype))
  assert_close(y, reference(x.astype(jnp.float32)), _tolerance(y.dtype), "vs float32")
  grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32)))(layer)
  assert grads["kernel"][...].dtype == jnp.dtype(param_dtype)


@pytest.mark.parametrize(
  "kwargs, message",
  [(dict(dtype=jnp.int32), "^dtype must be a floating dtype"), (dict(param_dtype="nope"), "^param_dtype must be")],
)
def test_dtype_arguments_are_checked(kwargs, message):
  with pytest.raises(TypeError, match=message):
    nn.Conv(2, 4, (3, 3), rngs=nnx.Rngs(0), **kwargs)


def test_jit_and_int_input():
  """Integer images are promoted like flax promotes them (to the parameters' float dtype)."""
  layer = nn.Conv(1, 2, (3, 3), rngs=nnx.Rngs(0))
  x = jnp.arange(2 * 5 * 5).reshape(2, 5, 5, 1) % 7
  y = nnx.jit(lambda m, x: m(x))(layer, x)
  assert y.dtype == jnp.float32
  assert_close(y, layer(x.astype(jnp.float32)), 1e-6, "int input")
  assert jax.tree.leaves(nnx.state(layer))[0].dtype == jnp.float32


def test_default_impl_is_auto_when_registered(rng):
  assert nn.default_impl() == (nn.DEFAULT_IMPL if nn.DEFAULT_IMPL in jc.available_impls() else None)
  (x,) = random(rng, (2, 9, 9, 3))
  auto, reference = (nn.Conv(3, 5, (3, 3), impl=impl, rngs=nnx.Rngs(1)) for impl in (None, "lax"))
  assert_close(auto(x), reference(x), 1e-4, "impl=None vs lax")


@pytest.mark.parametrize("init, gain", [(None, 1.0), (nnx.initializers.he_normal(), 2.0)])
def test_kernel_init_scale(init, gain):
  # LeCun normal by default: variance 1 / fan_in with fan_in = 3 * 3 * 64 / groups.
  kwargs = {} if init is None else {"kernel_init": init}
  w = np.asarray(nn.Conv(128, 64, (3, 3), groups=2, rngs=nnx.Rngs(0), **kwargs).kernel[...])
  assert w.std() == pytest.approx(np.sqrt(gain / (3 * 3 * 64)), rel=0.03)
  assert abs(w.mean()) < 0.05 * w.std()


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(groups=3), "groups=3 must divide in_features"),
    (dict(padding="middle"), "padding must be one of"),
    (dict(stride=0), "stride must be >= 1"),
    (dict(impl="nope"), "impl='nope' is not a registered kernel"),
    (dict(kernel_size=(3, 3, 3, 3)), "kernel_size must give 1-3 spatial axes"),
    (dict(dilation=(1, 2, 3)), "dilation must be an int or a sequence of 2 ints"),
  ],
)
def test_conv_rejects_bad_arguments(kwargs, message):
  kwargs = {"kernel_size": (3, 3), **kwargs}
  with pytest.raises(ValueError, match=message):
    nn.Conv(4, 8, rngs=nnx.Rngs(0), **kwargs)


def test_pools_match_reduce_window(rng):
  (x,) = random(rng, (2, 8, 9, 3))
  window, stride, pads = (3, 2), (2, 2), ((1, 1), (0, 1))
  full_pads = ((0, 0), *pads, (0, 0))
  max_ref = lax.reduce_window(x, -np.inf, lax.max, (1, *window, 1), (1, *stride, 1), full_pads)
  sum_ref = lax.reduce_window(x, 0.0, lax.add, (1, *window, 1), (1, *stride, 1), full_pads)
  assert_close(nn.MaxPool(window, stride, pads)(x), max_ref, 1e-6, "max")
  assert_close(nn.AvgPool(window, stride, pads)(x), sum_ref / 6, 1e-6, "avg")
  pool = nn.AvgPool(2)
  assert (pool.window, pool.stride, pool.padding, pool.count_include_pad) == (2, None, "valid", True)
  assert nn.MaxPool((2, 2))(jnp.ones((1, 4, 4, 1))).shape == (1, 2, 2, 1)


@pytest.mark.parametrize(
  "args, message",
  [
    (((2, 0),), "window must be >= 1"),
    (((2, 2), (1, 1, 1)), "stride must be an int or a sequence of 2 ints"),
    ((2, 1, "edge"), "padding must be one of"),
  ],
)
def test_pools_reject_bad_arguments(args, message):
  for pool in (nn.MaxPool, nn.AvgPool):
    with pytest.raises(ValueError, match=message):
      pool(*args)


def test_flatten():
  assert nn.flatten(jnp.zeros((3, 2, 4, 5))).shape == (3, 40)


def test_pool_layers_take_pytorch_arguments(rng):
  """MaxPool(dilation, ceil_mode), AvgPool(count_include_pad, ceil_mode): ceil_mode as extra high -inf/zero pads."""
  (x,) = random(rng, (2, 7, 7, 3))
  # A 2x2 window at stride 2 over 7 cells keeps 4 windows with ceil_mode; the last sees 1 row / column.
  max_ref = lax.reduce_window(x, -np.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0), (0, 1), (0, 1), (0, 0)))
  sum_ref = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0), (0, 1), (0, 1), (0, 0)))
  cells = np.multiply.outer([2, 2, 2, 1], [2, 2, 2, 1])[None, ..., None]
  assert_close(nn.MaxPool(2, ceil_mode=True)(x), max_ref, 1e-6, "max ceil")
  assert_close(nn.AvgPool(2, ceil_mode=True)(x), sum_ref / cells, 1e-6, "avg ceil")  # cells inside the padded input
  dilated = nn.MaxPool(2, 1, dilation=3)
  expected = np.maximum.reduce([x[:, i : i + 4, j : j + 4] for i in (0, 3) for j in (0, 3)])
  assert_close(dilated(x), expected, 0, "dilated")
  assert (dilated.window, dilated.stride, dilated.padding, dilated.dilation, dilated.ceil_mode) == (
    2,
    1,
    "valid",
    3,
    False,
  )
  pool = nn.AvgPool(3, 2, 1, count_include_pad=False, ceil_mode=True)
  assert (pool.count_include_pad, pool.ceil_mode) == (False, True)


def test_adaptive_pool_layers(rng):
  (x,) = random(rng, (2, 7, 5, 3))
  assert_close(nn.AdaptiveAvgPool((1, 1))(x), x.mean(axis=(1, 2), keepdims=True), 1e-6, "global avg")
  assert_close(nn.AdaptiveMaxPool(1)(x[:, :, 0]), x[:, :, 0].max(axis=1, keepdims=True), 0, "global max 1-d")
  assert nn.AdaptiveMaxPool((3, None))(x).shape == (2, 3, 5, 3)
  assert nn.AdaptiveAvgPool(2).output_size == 2


@pytest.mark.parametrize(
  "make, exc, message",
  [
    (lambda: nn.MaxPool(2, dilation=0), ValueError, "^dilation"),
    (lambda: nn.MaxPool((2, 2), dilation=(1, 1, 1)), ValueError, "^dilation"),
    (lambda: nn.MaxPool(2, ceil_mode=1), TypeError, "^ceil_mode"),
    (lambda: nn.AvgPool(2, ceil_mode=None), TypeError, "^ceil_mode"),
    (lambda: nn.AvgPool(2, count_include_pad="no"), TypeError, "^count_include_pad"),
    (lambda: nn.MaxPool(2, padding=2), ValueError, "^padding"),  # pad as wide as the window
    (lambda: nn.AdaptiveAvgPool(0), ValueError, "^output_size"),
    (lambda: nn.AdaptiveMaxPool((2, -1)), ValueError, "^output_size"),
    (lambda: nn.AdaptiveAvgPool((1, 2, 3, 4)), ValueError, "^output_size"),
    (lambda: nn.AdaptiveMaxPool(2.0), TypeError, "^output_size"),
    (lambda: nn.AdaptiveMaxPool(3)(jnp.ones((1, 4, 4, 4, 4, 1))), ValueError, "^x"),
  ],
)
def test_pool_layers_check_arguments_at_construction(make, exc, message):
  with pytest.raises(exc, match=message):
    make()
