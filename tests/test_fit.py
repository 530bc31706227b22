"""jaxconv.training.fit: against a plain nnx.Optimizer loop (BatchNorm, Dropout), resume, evaluation with the
trained batch statistics, bad arguments, and 2 forced CPU devices against one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxconv import nn, training
from jaxconv.training import loop, trainer

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ("epoch_seconds", "images_per_second", "eval_seconds", "compile_seconds", "elapsed_seconds")


class Small(nnx.Module):
  """Conv -> BatchNorm -> ReLU -> global mean -> Dropout -> Dense: every kind of state fit must carry."""

  def __init__(self, *, dropout: float = 0.3, rngs: nnx.Rngs):
    # No bias before BatchNorm: its gradient is rounding noise, which Adam would blow up to full steps.
    self.conv = nn.Conv(1, 4, (3, 3), use_bias=False, impl="lax", rngs=rngs)
    self.norm = nnx.BatchNorm(4, momentum=0.8, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.dense = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.norm(self.conv(x)))
    return self.dense(self.drop(x.mean(axis=(1, 2))))


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``n`` images ``(n, 6, 6, 1)`` whose label (0..2) shows in their brightness, learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n).astype(np.int32)
  images = rng.standard_normal((n, 6, 6, 1)).astype(np.float32) + labels[:, None, None, None]
  return images, labels


def without_timings(records: list[dict]) -> list[dict]:
  """``records`` without their wall-clock fields."""
  return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def leaves(model: nnx.Module) -> list[np.ndarray]:
  """Every variable of ``model`` (parameters, batch statistics, RNG counts and key data), in tree order."""
  state = nnx.state(model)
  return [
    np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
    for x in jax.tree.leaves(state)
  ]


def plain_loop(model: nnx.Module, tx: optax.GradientTransformation, train, epochs: int, batch_size: int, seed: int):
  """The textbook NNX loop over fit's batches, in fit's order: one ``nnx.jit`` step per batch."""
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, images, labels):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()

    optimizer.update(model, nnx.grad(loss_fn)(model))

  images, labels = train
  model.train()
  for epoch in range(1, epochs + 1):
    for rows in np.asarray(loop.epoch_batches(seed, epoch, len(labels), batch_size)):
      step(model, optimizer, jnp.asarray(images[rows]), jnp.asarray(labels[rows]))


def test_fit_matches_a_plain_nnx_loop_with_batch_norm_and_dropout():
  train, test = data(96), data(40, seed=1)
  tx = optax.adam(1e-2)
  model, reference = Small(rngs=nnx.Rngs(0)), Small(rngs=nnx.Rngs(0))
  history = training.fit(model, tx, train, epochs=2, test=test, batch_size=16, seed=3, steps_per_call=4)
  plain_loop(reference, tx, train, 2, 16, 3)
  got, want = leaves(model), leaves(reference)
  assert len(got) == len(want) == 9  # conv, norm and dense: 5 params; 2 batch stats; the dropout stream's count and key
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  # The batch statistics moved and the dropout stream advanced once per step (2 epochs of 6 steps).
  assert not np.allclose(model.norm.mean[...], 0.0)
  assert int(model.drop.rngs.count[...]) == 12
  assert [r["epoch"] for r in history] == [1, 2]
  for record in history:
    assert 0.0 <= record["train_accuracy"] <= 1.0 and 0.0 <= record["test_accuracy"] <= 1.0
    assert set(record) >= {"train_loss", "test_loss", "epoch_seconds", "images_per_second", "elapsed_seconds"}


@pytest.mark.slow  # 4 s on a 2-core AVX2 EPYC
def test_eval_mode_reproduces_the_reported_test_accuracy():
  train, test = data(96), data(40, seed=1)
  model = Small(rngs=nnx.Rngs(0))
  history = training.fit(model, optax.adam(1e-2), train, epochs=3, test=test, batch_size=16)
  model.eval()
  logits = model(jnp.asarray(test[0]))
  assert float((np.asarray(logits.argmax(-1)) == test[1]).mean()) == history[-1]["test_accuracy"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, test[1]).mean()
  assert float(loss) == pytest.approx(history[-1]["test_loss"], rel=1e-5)
  # Training mode (batch statistics of the test set, dropout) gives other logits: eval mode was used.
  model.train()
  assert not np.allclose(model(jnp.asarray(test[0])), logits)


def test_fixed_seed_and_initialisation_are_bit_identical():
  train = data(64)
  runs = []
  for _ in range(2):
    model = Small(rngs=nnx.Rngs(5))
    history = training.fit(model, optax.sgd(0.1), train, epochs=1, batch_size=16, seed=7)
    runs.append((leaves(model), without_timings(history)))
  for a, b in zip(runs[0][0], runs[1][0], strict=True):
    np.testing.assert_array_equal(a, b)
  assert runs[0][1] == runs[1][1] and "test_loss" not in runs[0][1][0]


def test_resume_equals_an_uninterrupted_run(tmp_path):
  train, test = data(64), data(32, seed=1)
  tx = optax.adam(1e-2)
  whole = Small(rngs=nnx.Rngs(0))
  want = training.fit(whole, tx, train, epochs=3, test=test, batch_size=16, workdir=tmp_path / "whole")
  first = Small(rngs=nnx.Rngs(0))
  training.fit(first, tx, train, epochs=1, test=test, batch_size=16, workdir=tmp_path / "parts")
  # A fresh process would build a freshly initialised model: its state comes from the checkpoint.
  resumed = Small(rngs=nnx.Rngs(42))
  got = training.fit(resumed, tx, train, epochs=3, test=test, batch_size=16, workdir=tmp_path / "parts")
  assert without_timings(got) == without_timings(want)
  for a, b in zip(leaves(resumed), leaves(whole), strict=True):
    np.testing.assert_array_equal(a, b)
  lines = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
  assert lines == got
  assert sorted(p.name for p in (tmp_path / "parts" / "checkpoints").iterdir()) == ["2", "3"]
  # restore: the trained state into another fresh model.
  restored = training.restore(Small(rngs=nnx.Rngs(9)), tmp_path / "parts")
  for a, b in zip(leaves(restored), leaves(whole), strict=True):
    np.testing.assert_array_equal(a, b)


def test_resume_with_another_batch_size_or_model_is_refused(tmp_path):
  train = data(64)
  training.fit(Small(rngs=nnx.Rngs(0)), optax.sgd(0.1), train, epochs=1, batch_size=16, workdir=tmp_path)
  with pytest.raises(training.ConfigMismatchError, match="fit.batch_size: 16 -> 32"):
    training.fit(Small(rngs=nnx.Rngs(0)), optax.sgd(0.1), train, epochs=2, batch_size=32, workdir=tmp_path)
  with pytest.raises(training.ConfigMismatchError, match="fit.optimizer_state"):
    training.fit(Small(rngs=nnx.Rngs(0)), optax.adam(0.1), train, epochs=2, batch_size=16, workdir=tmp_path)
  assert not (tmp_path / "checkpoints.damaged").exists()


def bad_labels() -> tuple[np.ndarray, np.ndarray]:
  images, labels = data(32)
  labels[3] = 3  # Small has 3 classes
  return images, labels


@pytest.mark.parametrize(
  "change, error, message",
  [
    ({"epochs": 0}, ValueError, r"epochs must be an int >= 1; got 0"),
    ({"epochs": 1.5}, TypeError, r"epochs must be an int"),
    ({"batch_size": 0}, ValueError, r"batch_size must be an int >= 1; got 0"),
    ({"batch_size": 64}, ValueError, r"batch_size=64 is larger than the training set \(32 examples\)"),
    ({"train": (data(32)[0], data(31)[1])}, ValueError, r"train has 32 images but 31 labels"),
    ({"train": bad_labels()}, ValueError, r"1 of the 32 train labels are outside \[0, 3\) \(values 3\)"),
    ({"train": (data(32)[0].astype(np.uint8), data(32)[1])}, TypeError, r"train images must have a floating dtype"),
    (
      {"test": (np.zeros((4, 7, 7, 1), np.float32), np.zeros(4, np.int32))},
      ValueError,
      r"test images must have the shape",
    ),
    ({"test": (data(8)[0], -np.ones(8, np.int32))}, ValueError, r"8 of the 8 test labels are outside"),
    ({"seed": -1}, ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
    ({"steps_per_call": 0}, ValueError, r"steps_per_call must be an int >= 1"),
    ({"augment": {"max_shift": 1}}, TypeError, r"augment must be a jaxconv.training.AugmentConfig"),
    ({"optimizer": "adam"}, TypeError, r"optimizer must be an optax.GradientTransformation"),
    ({"mesh": "data"}, TypeError, r"mesh must be a jax.sharding.Mesh"),
    ({"compiler_options": ["x"]}, TypeError, r"compiler_options must be a mapping"),
    (
      {"compiler_options": {"xla_cpu_prefer_vector_width": 512}},
      TypeError,
      r"compiler_options must map str names to str or bool values; got 'xla_cpu_prefer_vector_width': 512",
    ),
    (
      {"compiler_options": {"no_such_option": "1"}},
      ValueError,
      r"compiler_options=.*XLA refuses them:.*no_such_option",
    ),
  ],
)
def test_bad_arguments_are_refused_naming_them(tmp_path, change, error, message):
  arguments = {"optimizer": optax.sgd(0.1), "train": data(32), "epochs": 1, "batch_size": 8, **change}
  optimizer, train = arguments.pop("optimizer"), arguments.pop("train")
  with pytest.raises(error, match=message):
    training.fit(Small(rngs=nnx.Rngs(0)), optimizer, train, workdir=tmp_path / "run", **arguments)
  assert not (tmp_path / "run").exists()  # refused before the workdir was made


@pytest.mark.slow  # 3.5 s; tests/test_train.py checks the programs' options in the fast set
def test_compiler_options_reach_both_compiled_programs(monkeypatch):
  compiled = []
  compile_steps = trainer.compile_steps
  monkeypatch.setattr(trainer, "compile_steps", lambda *a, **k: compiled.append(compile_steps(*a, **k)) or compiled[-1])
  train, test = data(64), data(32, seed=1)
  runs = []
  for options in (None, {"xla_cpu_experimental_ynn_fusion_type": ""}):
    model = Small(rngs=nnx.Rngs(0))
    training.fit(model, optax.adam(1e-2), train, epochs=1, test=test, batch_size=16, compiler_options=options)
    runs.append(leaves(model))
  (default_steps, default_eval), (steps, evaluate) = compiled
  if "__ynn_fusion" not in default_steps.as_text():
    pytest.skip("this jaxlib fuses none of the model's ops with YNNPACK")
  # Without YNNPACK's fusions the dense layer's dots are XLA's own, in training and in evaluation.
  assert "__ynn_fusion" in default_eval.as_text()
  assert "__ynn_fusion" not in steps.as_text() and "__ynn_fusion" not in evaluate.as_text()
  for a, b in zip(*runs, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_model_that_does_not_give_logits_is_refused():
  with pytest.raises(ValueError, match=r"model must map images \(N, 6, 6, 1\) to logits \(N, K\)"):
    training.fit(nn.Conv(1, 2, (3, 3), rngs=nnx.Rngs(0)), optax.sgd(0.1), data(16), epochs=1, batch_size=8)


# Fits the same BatchNorm model on one device and on 2 (three kinds of mesh); prints the results as JSON.
TWO_DEVICES = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from jax.sharding import AxisType
from jaxconv import nn, parallel, training
sys.path.insert(0, sys.argv[1])
from test_fit import Small, data, leaves

images, labels = data(64)
images[32:] += 2.0  # the second device's shard: its own batch statistics would be far from the global ones
test = data(30, seed=1)
meshes = {
  "none": None,
  "explicit": jax.make_mesh((2,), ("batch",)),
  "auto": jax.make_mesh((2,), ("batch",), axis_types=(AxisType.Auto,)),
  "jaxconv": parallel.make_mesh(2),
}
out = {"devices": jax.device_count()}
for name, mesh in meshes.items():
  model = Small(dropout=0.0, rngs=nnx.Rngs(0))
  history = training.fit(model, optax.adam(1e-2), (images, labels), epochs=3, test=test, batch_size=64, mesh=mesh)
  out[name] = {"leaves": [a.tolist() for a in leaves(model)], "history": history}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_two_devices_match_one():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [sys.executable, "-c", TWO_DEVICES, str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT, env=env,
    timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert out["devices"] == 2
  one = out["none"]
  for name in ("explicit", "auto", "jaxconv"):
    for a, b in zip(out[name]["leaves"], one["leaves"], strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for got, want in zip(without_timings(out[name]["history"]), without_timings(one["history"]), strict=True):
      assert got == pytest.approx(want, rel=1e-4)
