"""jaxconv.parallel and data-parallel training (jaxconv.training, the LeNet program): 4 forced CPU devices,
and 2 processes of 2 devices.

XLA's device count is fixed when JAX starts, so the multi-device checks run in subprocesses: one
script (``FOUR_DEVICES``) computes everything and prints it as JSON, and the tests read it.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from configs import default
from experiments import lenet
from jaxconv import parallel, training

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.py"
TEST_SIZE = 510  # not a multiple of 4: the test set gets 2 rows of padding
TIMINGS = ("epoch_seconds", "images_per_second", "eval_seconds", "compile_seconds", "elapsed_seconds")
COLLECTIVES = r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)\("


def forced_devices_env(count: int) -> dict[str, str]:
  """The environment of a subprocess whose JAX sees ``count`` CPU devices."""
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "JAX_PLATFORMS": "cpu"}


def without_timings(records: list[dict]) -> list[dict]:
  """``records`` without their wall-clock fields."""
  return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


# Run with 4 CPU devices; prints one JSON object of results (arrays as lists).
FOUR_DEVICES = r"""
import json, re, sys
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from experiments import lenet
from jaxconv import parallel, training
from jaxconv.training import trainer as program  # the loop that compiles the steps

smoke, workdir, collectives, test_size = sys.argv[1:]
namespace = {}
exec(Path(smoke).read_text(), namespace)
config = namespace["get_config"]()
config.data.test_size = int(test_size)
out = {"devices": jax.device_count()}
mesh = parallel.make_mesh(config.mesh.data)
replicated, examples = parallel.sharding(mesh), parallel.sharding(mesh, parallel.DATA_AXIS)

# 1. Three steps on one global batch of 32: one device against 4 (8 examples each).
rng = np.random.default_rng(0)
images, labels = rng.standard_normal((32, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 32).astype(np.int32)
tx = lenet.create_optimizer(config, steps_per_epoch=10)
graphdef, single = training.create_state(lenet.create_model(config, (28, 28, 1)), tx)
sharded = parallel.replicate(single, mesh)
batch = parallel.shard_examples(training.Batch(images, labels), mesh, 32)
key = training.epoch_key(0, 1)
single_step = jax.jit(training.make_train_step(graphdef, tx))
sharded_step = jax.jit(
  training.make_train_step(graphdef, tx, mesh),
  in_shardings=(replicated, examples, replicated),
  out_shardings=replicated,
)
sharded_step = sharded_step.lower(sharded, batch, key).compile()
for _ in range(3):
  single, single_metrics = single_step(single, training.Batch(jnp.asarray(images), jnp.asarray(labels)), key)
  sharded, sharded_metrics = sharded_step(sharded, batch, key)
out["param_max_abs_diff"] = max(
  float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded))
)
out["param_max_abs"] = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(single.params))
out["metrics"] = [{k: float(v) for k, v in m.items()} for m in (single_metrics, sharded_metrics)]
out["batch_shards"] = [list(s.data.shape) for s in batch.images.addressable_shards]
out["batch_spec"] = list(batch.images.sharding.spec)
out["params_replicated"] = all(a.sharding.is_fully_replicated for a in jax.tree.leaves(sharded))
out["step_collectives"] = sorted(set(re.findall(collectives, sharded_step.as_text())))

# 2. gather_shards and epoch_batches: shard d's block of rows indexes shard d.
data = parallel.shard_examples(np.arange(24 * 3).reshape(24, 3), mesh, 24)
rows = parallel.global_array(np.array([5, 0, 1, 2, 3, 4, 5, 0], np.int32), examples)
out["gathered"] = np.asarray(jax.jit(lambda d, r: parallel.gather_shards(d, r, mesh))(data, rows)).tolist()
idx = training.epoch_batches(0, 1, 24, 8, mesh)
out["idx"], out["idx_spec"] = np.asarray(idx).tolist(), list(idx.sharding.spec)

# 3. The smoke run on 4 devices (capturing its compiled functions), then a resume that restores.
compiled = []
compile_steps = program.compile_steps
program.compile_steps = lambda *args, **kwargs: compiled.append(compile_steps(*args, **kwargs)) or compiled[-1]
out["history"] = lenet.train_and_evaluate(config, workdir)
out["resumed"] = lenet.train_and_evaluate(config, workdir)
out["train_steps_collectives"] = sorted(set(re.findall(collectives, compiled[0][0].as_text())))
# The padded, sharded test set against one device on the unpadded one, with the trained parameters.
params = nnx.split(lenet.restore_model(config, workdir), nnx.Param)[1]
train_data, test_data = lenet.device_data(config, mesh)
out["train_rows"], out["test_rows"] = train_data.labels.shape[0], test_data.labels.shape[0]
one_device = lenet.device_data(config, parallel.make_mesh(1))[1]
evaluated = (
  compiled[0][1](parallel.replicate(params, mesh), test_data),
  jax.jit(training.make_evaluate(graphdef, 256))(jax.device_get(params), one_device),
)
out["evaluate"] = [{k: float(v) for k, v in m.items()} for m in evaluated]

# 4. Errors naming the config field, before any data is loaded.
errors = {}
for field, value in [("batch_size", 66), ("eval_batch_size", 250), ("mesh.data", 8)]:
  bad = namespace["get_config"]()
  parent, _, leaf = field.rpartition(".")
  (bad[parent] if parent else bad)[leaf] = value
  try:
    lenet.train_and_evaluate(bad, workdir + "-" + field)
  except ValueError as e:
    errors[field] = str(e)
out["errors"] = errors
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> dict:
  """The results of ``FOUR_DEVICES``, and its workdir under ``"workdir"``."""
  workdir = tmp_path_factory.mktemp("four") / "run"
  proc = subprocess.run(
      [sys.executable, "-c", FOUR_DEVICES, str(SMOKE), str(workdir), COLLECTIVES, str(TEST_SIZE)],
      capture_output=True, text=True, cwd=ROOT, env=forced_devices_env(4), timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT ", 1)[1])
  return {**result, "workdir": workdir}


@pytest.mark.slow  # the four-device run takes ~20 s
def test_sharded_step_matches_one_device(four):
  assert four["devices"] == 4
  # Same global batch, same 3 Adam steps: the 4-way reduction differs only in float32 rounding.
  assert four["param_max_abs_diff"] <= 1e-5 * four["param_max_abs"]
  single, sharded = four["metrics"]
  assert sharded["count"] == single["count"] == 32 and sharded["correct"] == single["correct"]
  assert sharded["loss"] == pytest.approx(single["loss"], rel=1e-5)


@pytest.mark.slow  # the four-device run takes ~20 s
def test_batch_is_sharded_and_state_replicated(four):
  assert four["batch_spec"] == ["data"]
  assert four["batch_shards"] == [[8, 28, 28, 1]] * 4
  assert four["params_replicated"]
  # The compiler, not the step, reduces the gradients and metrics over the devices.
  assert four["step_collectives"] == ["all-reduce"]


@pytest.mark.slow  # the four-device run takes ~20 s
def test_batches_are_gathered_where_the_data_lies(four):
  # 24 rows, 6 per device; rows block d (2 entries) indexes device d's shard.
  shards = np.arange(24 * 3).reshape(4, 6, 3)
  rows = np.array([5, 0, 1, 2, 3, 4, 5, 0]).reshape(4, 2)
  expected = np.concatenate([shards[d, rows[d]] for d in range(4)])
  np.testing.assert_array_equal(four["gathered"], expected)
  idx = np.array(four["idx"])
  assert idx.shape == (3, 8) and four["idx_spec"] == [None, "data"]
  for d in range(4):  # each shard's rows: a permutation of its 6 rows, cut to 3 steps of 2
    block = idx[:, 2 * d : 2 * d + 2]
    assert block.min() >= 0 and block.max() < 6 and len(np.unique(block)) == 6
  # No example crosses devices: the only collective of the epoch loop is the reduction.
  assert four["train_steps_collectives"] == ["all-reduce"]


@pytest.mark.slow  # the four-device run takes ~20 s
def test_short_run_on_four_devices_trains_and_writes_metrics(four):
  history = four["history"]
  records = [json.loads(line) for line in (four["workdir"] / lenet.METRICS_FILE).read_text().splitlines()]
  assert records == history and [r["epoch"] for r in history] == [1, 2]
  assert history[-1]["test_accuracy"] > 0.7 and history[-1]["train_loss"] < history[0]["train_loss"]
  assert (four["workdir"] / lenet.CURVES_FILE).is_file()
  assert sorted(p.name for p in (four["workdir"] / lenet.CHECKPOINT_DIR).iterdir()) == ["1", "2"]
  assert four["resumed"] == history
  # 2048 training rows split 512 per device; 510 test rows padded to 512, the padding masked.
  assert (four["train_rows"], four["test_rows"]) == (2048, 512)
  sharded, single = four["evaluate"]
  assert sharded["count"] == single["count"] == TEST_SIZE and sharded["correct"] == single["correct"]
  assert sharded["loss"] == pytest.approx(single["loss"], rel=1e-5)
  assert history[-1]["test_accuracy"] == sharded["correct"] / TEST_SIZE


@pytest.mark.slow  # the four-device run takes ~20 s (test_validate_config_checks_the_parallel_fields is fast)
@pytest.mark.parametrize(
  "field, message",
  [
    ("batch_size", r"config.batch_size=66 must be a multiple of the 4 devices of the mesh"),
    ("eval_batch_size", r"config.eval_batch_size=250 must be a multiple of the 4 devices"),
    ("mesh.data", r"config.mesh.data=8 is more than the 4 cpu devices available"),
  ],
)
def test_errors_name_the_config_field(four, field, message):
  assert re.match(message, four["errors"][field])


# --------------------------------------------------------------------------------------------
# in this process (one device)


@pytest.mark.slow  # the four-device run takes ~20 s
def test_checkpoint_of_four_devices_restores_on_one(four):
  config = runpy.run_path(str(SMOKE))["get_config"]()
  config.data.test_size = TEST_SIZE
  model = lenet.restore_model(config, four["workdir"])
  _, test = lenet.device_data(config)
  logits = nnx.jit(lambda model, x: model(x))(model, test.images)
  assert float((logits.argmax(-1) == test.labels).mean()) == pytest.approx(
    four["history"][-1]["test_accuracy"], abs=1.5 / TEST_SIZE
  )


def test_one_device_mesh_is_the_plain_shuffle():
  mesh = parallel.make_mesh(1)
  assert parallel.num_shards(mesh) == 1 and parallel.process_rows(100, mesh) == slice(0, 100)
  np.testing.assert_array_equal(training.epoch_batches(3, 2, 100, 16, mesh), training.epoch_batches(3, 2, 100, 16))


def test_mesh_larger_than_the_devices_names_the_field():
  with pytest.raises(ValueError, match=f"num_devices={jax.device_count() + 1} is more than"):
    parallel.make_mesh(jax.device_count() + 1)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("mesh.data", -1, r"config.mesh.data must be an int >= 0"),
    (
      "distributed.coordinator_address",
      "localhost",
      r"config.distributed.coordinator_address must be None or 'host:port'",
    ),
    ("distributed.num_processes", 0, r"config.distributed.num_processes must be None or a positive int"),
    ("distributed.process_id", -1, r"config.distributed.process_id must be None or an int >= 0"),
  ],
)
def test_validate_config_checks_the_parallel_fields(field, value, message):
  config = default.get_config()
  parent, _, leaf = field.rpartition(".")
  with config.unlocked():
    config[parent][leaf] = value
  with pytest.raises(ValueError, match=message):
    lenet.validate_config(config)


def test_distributed_is_off_by_default():
  from experiments.lenet.train import initialize_distributed

  initialize_distributed(default.get_config())
  assert not jax.distributed.is_initialized() and jax.process_count() == 1


# --------------------------------------------------------------------------------------------
# two processes of 2 CPU devices each, through the command line


def free_port() -> int:
  """A TCP port that was free on 127.0.0.1 a moment ago."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_four_local_devices(four, tmp_path):
  workdir = tmp_path / "run"
  address = f"127.0.0.1:{free_port()}"
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "experiments/train_lenet.py",
        f"--config={SMOKE}",
        f"--config.data.test_size={TEST_SIZE}",
        f"--workdir={workdir}",
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address={address}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={i}",
      ],
      cwd=ROOT,
      env=forced_devices_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )  # fmt: skip
    for i in range(2)
  ]
  try:
    logs = [proc.communicate(timeout=300)[1] for proc in procs]
  finally:
    for proc in procs:
      proc.kill()
  assert [proc.returncode for proc in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
  # Process 0 alone logs the epochs and writes the metrics, once.
  assert "epoch 2: train loss" in logs[0] and "epoch 2: train loss" not in logs[1]
  records = [json.loads(line) for line in (workdir / lenet.METRICS_FILE).read_text().splitlines()]
  assert sorted(p.name for p in (workdir / lenet.CHECKPOINT_DIR).iterdir()) == ["1", "2"]
  # The same 4-device mesh and data layout: the metrics of the one-process run, to float32 rounding.
  for got, want in zip(without_timings(records), without_timings(four["history"]), strict=True):
    assert got == pytest.approx(want, rel=1e-4)
