"""jaxconv.models.LeNet: layer structure, parameter counts, shapes, and every kernel's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from references import IMPLS, assert_close, random, refusal, rtol_for

from jaxconv import nn
from jaxconv.models import LeNet


def num_params(model: nnx.Module) -> int:
  """Number of scalar parameters of ``model``."""
  return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def output_shape(model: LeNet, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape of ``model``'s output for float32 input of ``shape``, without running it."""
  return nnx.eval_shape(lambda model, x: model(x), model, jax.ShapeDtypeStruct(shape, jnp.float32)).shape


@pytest.mark.parametrize("variant, act, pool", [("modern", nnx.relu, nn.MaxPool), ("classic", nnx.sigmoid, nn.AvgPool)])
def test_structure_and_parameter_count(variant, act, pool):
  model = nnx.eval_shape(lambda: LeNet(variant=variant, rngs=nnx.Rngs(0)))  # shapes only: nothing to run
  assert num_params(model) == 61_706
  conv1, act1, pool1, conv2, act2, pool2 = model.features.layers
  assert (conv1.kernel_size, conv1.padding, conv1.in_features, conv1.out_features) == ((5, 5), 2, 1, 6)
  assert (conv2.kernel_size, conv2.padding, conv2.in_features, conv2.out_features) == ((5, 5), "valid", 6, 16)
  assert act1 is act2 is act
  assert isinstance(pool1, pool) and isinstance(pool2, pool) and pool1.window == (2, 2)
  widths = [
    (layer.in_features, layer.out_features) for layer in model.classifier.layers if isinstance(layer, nnx.Linear)
  ]
  assert widths == [(400, 120), (120, 84), (84, 10)]
  assert output_shape(model, (3, 28, 28, 1)) == (3, 10)


def test_other_input_sizes_and_classes():
  model = nnx.eval_shape(lambda: LeNet(5, input_shape=(32, 32, 3), rngs=nnx.Rngs(0)))
  assert output_shape(model, (2, 32, 32, 3)) == (2, 5)
  assert model.classifier.layers[1].in_features == 16 * 6 * 6


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(variant="vintage"), "variant must be one of"),
    (dict(num_classes=0), "num_classes"),
    (dict(impl="nope"), "impl='nope'"),
  ],
)
def test_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    LeNet(rngs=nnx.Rngs(0), **kwargs)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
  """A small batch of standard-normal images ``(4, 28, 28, 1)``."""
  return random(np.random.default_rng(0), (4, 28, 28, 1))[0]


def refuses_lenet(impl: str) -> str | None:
  """Why ``impl`` cannot run one of LeNet's two convs on 28x28 inputs, or None."""
  return refusal(impl, (4, 28, 28, 1), (5, 5, 1, 6), padding=2) or refusal(impl, (4, 14, 14, 6), (5, 5, 6, 16))


def logits(model: LeNet, x: np.ndarray) -> jax.Array:
  """The model's logits, compiled (eager execution of the patch kernel is slow)."""
  return nnx.jit(lambda model, x: model(x))(model, x)


# toeplitz in the slow set (4 s on a 2-core AVX2 EPYC; auto runs onednn there).
@pytest.mark.parametrize(
  "impl", [pytest.param(i, marks=[pytest.mark.slow] if i == "toeplitz" else []) for i in IMPLS if i != "lax"]
)
def test_impls_agree_on_logits(images, impl):
  if reason := refuses_lenet(impl):
    pytest.skip(f"{impl} does not run LeNet: {reason}")
  # The same seed gives the same parameters whatever the kernel.
  reference, model = (LeNet(impl=name, rngs=nnx.Rngs(0)) for name in ("lax", impl))
  assert_close(logits(model, images), logits(reference, images), max(rtol_for(impl), 1e-5), f"{impl} vs lax")


def test_classic_gradients_agree_with_patches(images):
  labels = jnp.arange(4)

  def grads(impl: str) -> list[jax.Array]:
    model = LeNet(variant="classic", impl=impl, rngs=nnx.Rngs(0))

    def loss(model: LeNet) -> jax.Array:
      return -jnp.take_along_axis(jax.nn.log_softmax(model(images)), labels[:, None], 1).mean()

    return jax.tree.leaves(nnx.jit(nnx.grad(loss))(model))

  for got, want in zip(grads("patches"), grads("lax")):
    assert_close(got, want, 1e-4, "patches gradient")


@pytest.mark.parametrize(
  "dtype, param_dtype, out_dtype",
  [
    # float32 throughout is every other test's setting; here in the slow set (4 s).
    pytest.param(None, jnp.float32, jnp.float32, marks=pytest.mark.slow),
    # bfloat16 compute in the slow set too (10 s on a 2-core AVX2 EPYC); tests/test_nn.py has the layers'.
    pytest.param(jnp.bfloat16, jnp.float32, jnp.bfloat16, marks=pytest.mark.slow),
    # bfloat16 parameters in the slow set (8-10 s on a 2-core AVX2 EPYC; the ResNet's fast case has them).
    pytest.param(None, jnp.bfloat16, jnp.float32, marks=pytest.mark.slow),
  ],
)
def test_dtype_keywords(images, dtype, param_dtype, out_dtype):
  """Parameters in param_dtype; logits in flax's promoted dtype (float32 x: float32 unless dtype); grads too."""
  model = LeNet(dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  reference = LeNet(impl="lax", rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(param_dtype)}
  # The float32 reference holds the same (rounded) values, so only the computation's rounding differs.
  nnx.update(reference, jax.tree.map(lambda p: p.astype(jnp.float32), params))
  y = logits(model, images)
  assert y.dtype == jnp.dtype(out_dtype)
  assert_close(y, logits(reference, images), 1e-5 if out_dtype == jnp.float32 else 5e-2, "vs float32 lax")
  x = jnp.asarray(images)
  grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32)))(model)
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(param_dtype)}
