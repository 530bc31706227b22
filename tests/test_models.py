"""jaxconv.models.ResNet: shapes, parameter count, BatchNorm modes, dtypes, impl reaching every conv, grads vs lax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from references import LAX_DIMS, assert_close, random

import jaxconv.receptive_field as rf
from jaxconv import nn
from jaxconv.models import BasicBlock, ResNet


def convs(model: nnx.Module) -> list[nn.Conv]:
  """Every ``nn.Conv`` inside ``model``."""
  return [m for _, m in nnx.iter_modules(model) if isinstance(m, nn.Conv)]


def output_shape(model: nnx.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
  """``model``'s output shape on float32 input of ``shape``, without running it."""
  return nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct(shape, jnp.float32)).shape


@nnx.jit
def call(model: nnx.Module, x: jax.Array) -> jax.Array:
  """``model(x)``, compiled as one program (eager calls compile op by op)."""
  return model(x)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
  """Standard-normal images ``(4, 12, 12, 1)``: small, so eager calls stay quick."""
  return random(np.random.default_rng(0), (4, 12, 12, 1))[0]


def test_default_structure_and_parameter_count():
  model = nnx.eval_shape(lambda: ResNet(rngs=nnx.Rngs(0)))
  # stem 3x3 1->16 + BN; block 16->16; block 16->32 (stride 2, projection); block 32->64 (same); head 64->10.
  block = lambda i, o: 9 * i * o + 9 * o * o + 2 * 2 * o + (i * o + 2 * o if i != o else 0)
  expected = 9 * 16 + 2 * 16 + block(16, 16) + block(16, 32) + block(32, 64) + 64 * 10 + 10
  assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == expected == 77_754
  strides = [c.stride for c in convs(model)]
  assert strides.count((2, 2)) == 4  # two downsampling blocks: their first conv and their projection
  assert output_shape(model, (3, 28, 28, 1)) == (3, 10)
  assert nnx.eval_shape(lambda m, x: m.features(x), model, jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)).shape == (
    3,
    7,
    7,
    64,
  )


def test_cifar_sizes_and_deeper_stages():
  model = nnx.eval_shape(
    lambda: ResNet(100, in_features=3, stage_sizes=(2, 2, 2, 2), widths=(8, 16, 32, 64), rngs=nnx.Rngs(0))
  )
  assert output_shape(model, (2, 32, 32, 3)) == (2, 100)
  blocks = [b for b in model.features.layers if isinstance(b, BasicBlock)]
  assert len(blocks) == 8
  assert [b.projection is not None for b in blocks] == [False, False, True, False, True, False, True, False]
  assert len(convs(model)) == 1 + 2 * 8 + 3


@pytest.mark.parametrize(
  "kwargs, exc, message",
  [
    (dict(num_classes=0), ValueError, "^num_classes"),
    (dict(in_features=0), ValueError, "^in_features"),
    (dict(stage_sizes=(1, 1), widths=(8, 16, 32)), ValueError, "^stage_sizes and widths"),
    (dict(widths=(8, 0, 32)), ValueError, "^widths"),
    (dict(stage_sizes=3), TypeError, "^stage_sizes"),
    (dict(impl="nope"), ValueError, "impl='nope'"),
    (dict(param_dtype=jnp.int8), TypeError, "^param_dtype"),
  ],
)
def test_rejects_bad_arguments(kwargs, exc, message):
  with pytest.raises(exc, match=message):
    ResNet(rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.slow  # 12 s on a 2-core AVX2 EPYC; tests/test_fit.py trains BatchNorm and Dropout in the fast set
def test_train_and_eval_modes(images):
  """Train mode normalises with batch statistics and updates the running ones; eval mode uses and keeps them."""
  model = ResNet(widths=(4, 8, 8), impl="lax", rngs=nnx.Rngs(0))
  stem, stem_bn = model.features.layers[:2]
  # An independent reference for the stem's running mean after one training step: lax on the same kernel.
  conv = lax.conv_general_dilated(
    images, np.asarray(stem.kernel[...]), (1, 1), ((1, 1), (1, 1)), dimension_numbers=LAX_DIMS[2]
  )
  train = call(model, images)
  assert_close(stem_bn.mean[...], 0.1 * conv.mean(axis=(0, 1, 2)), 1e-5, "running mean after one step (momentum 0.9)")
  stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  model.eval()
  evaluated = call(model, images)
  assert not np.allclose(train, evaluated, atol=1e-3), "eval mode must not use the batch statistics"
  assert all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
  )
  assert_close(call(model, images), evaluated, 0, "eval is deterministic")


@pytest.mark.parametrize(
  "x_dtype, dtype, param_dtype, out_dtype",
  [
    # The ResNet compiles for 10-16 s on a 2-core AVX2 EPYC: float32 in, float32 or bfloat16 compute, in
    # the slow set; LeNet's cases (tests/test_lenet.py) keep bfloat16 compute in the fast set.
    pytest.param(jnp.float32, None, jnp.float32, jnp.float32, marks=pytest.mark.slow),
    pytest.param(jnp.float32, jnp.bfloat16, jnp.float32, jnp.bfloat16, marks=pytest.mark.slow),
    # All bfloat16 in the slow set (8 s).
    pytest.param(jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, marks=pytest.mark.slow),
    # dtype=None: BatchNorm's float32 statistics promote its output to float32, as in flax.nnx
    # (bfloat16 parameters too in the slow set: 8 s).
    pytest.param(jnp.bfloat16, None, jnp.bfloat16, jnp.float32, marks=pytest.mark.slow),
    # The ResNet's first compile in a worker costs 10-18 s on a 2-core AVX2 EPYC: slow too.
    pytest.param(jnp.bfloat16, None, jnp.float32, jnp.float32, marks=pytest.mark.slow),
  ],
)
def test_dtype_keywords(images, x_dtype, dtype, param_dtype, out_dtype):
  """Parameters in param_dtype (BatchNorm statistics float32, as flax), logits in flax's dtype, grads in param_dtype."""
  model = ResNet(widths=(4, 8, 8), dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(param_dtype)}
  assert {s.dtype for s in jax.tree.leaves(nnx.state(model, nnx.BatchStat))} == {jnp.dtype(jnp.float32)}
  reference = ResNet(widths=(4, 8, 8), impl="lax", rngs=nnx.Rngs(0))
  nnx.update(reference, jax.tree.map(lambda p: p.astype(jnp.float32), nnx.state(model, nnx.Param)))
  x = jnp.asarray(images, x_dtype)
  y = call(model, x)
  assert y.dtype == jnp.dtype(out_dtype)
  exact = all(jnp.dtype(d) == jnp.float32 for d in (x_dtype, dtype or jnp.float32, param_dtype))
  assert_close(y, call(reference, x.astype(jnp.float32)), 1e-4 if exact else 0.1, "vs float32 lax")
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32))))(model)
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(param_dtype)}


# In the slow set (14 s for None, auto, on a 2-core AVX2 EPYC): the README's fast tests stay under 5
# minutes on 2 cores.
@pytest.mark.slow
@pytest.mark.parametrize("impl", ["im2col", None])
def test_impl_reaches_every_conv_and_gradients_match_lax(images, impl):
  """Every conv holds the impl, the traced program runs only it, and the gradients equal the lax model's."""
  model = ResNet(widths=(4, 8, 8), impl=impl, rngs=nnx.Rngs(0))
  reference = ResNet(widths=(4, 8, 8), impl="lax", rngs=nnx.Rngs(0))
  assert [c.impl for c in convs(model)] == [impl] * 9
  expected = nn.default_impl() if impl is None else impl
  model.eval()  # tracing a training call would update the batch statistics from inside the trace
  jaxpr = jax.make_jaxpr(lambda x: model(x))(images)
  model.train()
  ran = {e.params["impl"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "jaxconv_conv"}
  count = sum(e.primitive.name == "jaxconv_conv" for e in jaxpr.jaxpr.eqns)
  assert count == 9
  if expected != "auto":
    assert ran == {expected}
  labels = jnp.arange(4) % 10

  def loss(m: ResNet) -> jax.Array:
    return -jnp.take_along_axis(jax.nn.log_softmax(m(images)), labels[:, None], 1).mean()

  got, want = nnx.jit(nnx.grad(loss))(model), nnx.jit(nnx.grad(loss))(reference)
  for (path, g), (_, w) in zip(jax.tree.leaves_with_path(got), jax.tree.leaves_with_path(want), strict=True):
    assert_close(g, w, 1e-4, f"{impl}: {jax.tree_util.keystr(path)}")


@pytest.mark.slow  # 9 s: building a ResNet compiles an initializer per weight shape
def test_receptive_field_refuses_residual_blocks():
  with pytest.raises(ValueError, match="^BasicBlock: a block of several layers"):
    rf.walk(ResNet(widths=(4, 8, 8), rngs=nnx.Rngs(0)), (28, 28))
