"""Inside a user's sharded ``jax.jit`` program: every op keeps a batch-sharded input sharded.

On 2 forced CPU devices (a subprocess: XLA's device count is fixed when JAX starts), with x
batch-sharded by a ``NamedSharding`` on a 1-D mesh, on Auto axes and on ``jax.make_mesh``'s
default Explicit axes (inside ``jax.set_mesh``): ``jc.conv`` with every registered kernel
(``jc.available_impls()`` at run time, so a new kernel is covered), ``conv_transpose``, the four
pools, ``conv_general_dilated`` (also as ``flax.nnx.Conv``'s hook in a train step), and their
gradients. Each case reports the output's partition spec, the compiled HLO's collectives and the
shapes it all-gathers, and its largest difference from the same call on one device; the tests
read that JSON. Sharding beyond the batch (a C_out-split kernel, a spatially split input) is
checked on the same devices.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
N = 8  # the global batch; 4 rows per device

# Shared by the scripts: the harness that runs one case on both kinds of axes.
HARNESS = r"""
import json, re, sys, warnings
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import jaxconv as jc

GATHERED = re.compile(r"=\s*\(?(\w+\[[0-9,]*\])[^\n]*?\ball-gather(?:-start)?\(")
COLLECTIVE = re.compile(r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 14, 14, 6)).astype(np.float32)


def mesh_of(kind, shape=(2,), names=("data",)):
  axis = AxisType.Auto if kind == "auto" else AxisType.Explicit
  return jax.make_mesh(shape, names, axis_types=(axis,) * len(shape))


def spec_of(a):
  spec = tuple(a.sharding.spec) if isinstance(a.sharding, NamedSharding) else ()
  return [None if e is None else e if isinstance(e, str) else list(e) for e in spec]


def run(op, args, specs, kind, mesh=None):
  # The op on one device, and jitted on the mesh with args laid out by specs: specs, HLO, error.
  want = jax.tree.leaves(jax.jit(op)(*args))
  mesh = mesh or mesh_of(kind)
  with warnings.catch_warnings(record=True) as caught, jax.set_mesh(mesh):
    warnings.simplefilter("always")
    placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    fn = jax.jit(op)
    text = fn.lower(*placed).compile().as_text()
    got = jax.tree.leaves(fn(*placed))
  scale = [max(1.0, float(np.abs(np.asarray(w)).max())) for w in want]
  return {
    "specs": [spec_of(g) for g in got],
    "collectives": sorted(set(COLLECTIVE.findall(text))),
    "gathered": sorted(set(GATHERED.findall(text))),
    "error": max(float(np.abs(np.asarray(g) - np.asarray(w)).max()) / s for g, w, s in zip(got, want, scale)),
    "warnings": [str(w.message) for w in caught if "jaxconv" in str(w.message)],
  }


def with_grads(f):
  # f(x, w) -> (y, dL/dx, dL/dw) for L = sum(sin(y)), so the cotangent is not uniform.
  def op(x, w):
    loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))
    return (f(x, w), *jax.grad(loss, argnums=(0, 1))(x, w))
  return op
"""

# Every registered kernel: conv, dx, dw, on a call it serves.
KERNELS = (
  HARNESS
  + r"""
CANDIDATES = (((5, 5, 6, 16), 1), ((3, 3, 6, 16), 1), ((3, 3, 2, 6), 3), ((3, 3, 1, 6), 6))
out = {"devices": jax.device_count(), "impls": list(jc.available_impls()), "cases": {}, "unserved": []}
for impl in jc.available_impls():
  for shape, groups in CANDIDATES:
    w = rng.standard_normal(shape).astype(np.float32)
    f = lambda x, w, impl=impl, groups=groups: jc.conv(x, w, stride=1, padding="same", groups=groups, impl=impl)
    try:
      jax.eval_shape(f, x, w)
    except ValueError:
      continue
    for kind in ("auto", "explicit"):
      out["cases"][f"{impl}/{kind}"] = run(with_grads(f), (x, w), (P("data"), P()), kind)
    break
  else:
    out["unserved"].append(impl)
print("RESULT " + json.dumps(out))
"""
)

# conv_transpose, the pools, conv_general_dilated and its nnx.Conv drop-in, and splits beyond the batch.
OPS = (
  HARNESS
  + r"""
import functools
import optax
from flax import nnx
import jaxconv

out = {}
w = rng.standard_normal((3, 3, 6, 4)).astype(np.float32)
ops = {
  "conv_transpose": lambda x, w: jc.conv_transpose(x, w, stride=2, padding="same"),
  "conv_transpose[auto]": lambda x, w: jc.conv_transpose(x, w, stride=2, padding="same", impl="auto"),
  "conv_general_dilated": lambda x, w: jaxconv.conv_general_dilated(
    x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), (1, 1), "SAME"),
  "conv_general_dilated[nhwc]": lambda x, w: jaxconv.conv_general_dilated(
    x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
}
pools = {
  "max_pool": lambda x: jc.max_pool(x, 2),
  "max_pool[overlapping]": lambda x: jc.max_pool(x, 3, 2, padding="same"),
  "max_pool[dilated]": lambda x: jc.max_pool(x, 2, 1, dilation=2),
  "avg_pool": lambda x: jc.avg_pool(x, 2),
  "avg_pool[ceil]": lambda x: jc.avg_pool(x, 3, 2, ceil_mode=True, count_include_pad=False),
  "adaptive_avg_pool": lambda x: jc.adaptive_avg_pool(x, 7),
  "adaptive_avg_pool[uneven]": lambda x: jc.adaptive_avg_pool(x, 3),
  "adaptive_max_pool": lambda x: jc.adaptive_max_pool(x, 7),
  "adaptive_max_pool[uneven]": lambda x: jc.adaptive_max_pool(x, 5),
}
xv = rng.standard_normal((3, 8, 10, 10, 6)).astype(np.float32)  # vmapped over a leading axis, batch split
vmapped = jax.vmap(lambda x, w: jc.conv(x, w, padding="same", impl="im2col"), in_axes=(0, None))
for kind in ("auto", "explicit"):
  out[f"vmap/{kind}"] = run(with_grads(vmapped), (xv, w), (P(None, "data"), P()), kind)
  for name, f in ops.items():
    out[f"{name}/{kind}"] = run(with_grads(f), (x, w), (P("data"), P()), kind)
  for name, f in pools.items():
    op = lambda x, f=f: (f(x), jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x))
    out[f"{name}/{kind}"] = run(op, (x,), (P("data"),), kind)


# A bias in the kernel's own calls (oneDNN's forward_bias and kernel_grad_bias) and its gradient.
bias_impl = "onednn" if "onednn" in jc.available_impls() else "im2col"
conv_bias = lambda x, w, b: jc.conv(x, w, b, padding="same", impl=bias_impl)
bias_op = lambda x, w, b: (
  conv_bias(x, w, b), *jax.grad(lambda *a: jnp.sum(jnp.sin(conv_bias(*a))), argnums=(0, 1, 2))(x, w, b))
bias = rng.standard_normal(4).astype(np.float32)
for kind in ("auto", "explicit"):
  out[f"conv+bias/{kind}"] = run(bias_op, (x, w, bias), (P("data"), P(), P()), kind)


# The Flax drop-in: one SGD step of a small CNN whose convolutions are jaxconv's.
class CNN(nnx.Module):
  def __init__(self, rngs):
    conv = functools.partial(nnx.Conv, padding="SAME", conv_general_dilated=jaxconv.conv_general_dilated, rngs=rngs)
    self.conv1, self.conv2 = conv(6, 8, (3, 3)), conv(8, 8, (3, 3), strides=2)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x):
    y = jc.max_pool(nnx.relu(self.conv1(x)), 2)
    return self.head(jnp.mean(nnx.relu(self.conv2(y)), axis=(1, 2)))


graphdef, params = nnx.split(CNN(nnx.Rngs(0)))
labels = rng.integers(0, 10, 8).astype(np.int32)


def train_step(params, x, labels):
  def loss(params):
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  value, grads = jax.value_and_grad(loss)(params)
  return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), value


leaves, treedef = jax.tree.flatten(params)
step = lambda x, labels, *leaves: train_step(jax.tree.unflatten(treedef, leaves), x, labels)
for kind in ("auto", "explicit"):
  out[f"nnx_train_step/{kind}"] = run(step, (x, labels, *leaves), (P("data"), P("data"), *(P(),) * len(leaves)), kind)

# Beyond the batch: a kernel split over C_out (model parallelism), a spatially split input.
w16 = rng.standard_normal((3, 3, 6, 16)).astype(np.float32)
for impl in ("im2col", "onednn" if "onednn" in jc.available_impls() else "patches"):
  f = with_grads(lambda x, w, impl=impl: jc.conv(x, w, padding="same", impl=impl))
  for kind in ("auto", "explicit"):
    out[f"model/{impl}/{kind}"] = run(f, (x, w16), (P(), P(None, None, None, "data")), kind)
    out[f"batch+model/{impl}/{kind}"] = run(
      f, (x, w16), (P("data"), P(None, None, None, "model")), kind, mesh_of(kind, (1, 2), ("data", "model")))
    out[f"spatial/{impl}/{kind}"] = run(f, (x, w16), (P(None, "data"), P()), kind)
print("RESULT " + json.dumps(out))
"""
)


# Slow: every registered kernel on strided, dilated, grouped, 1-D and 3-D calls, and conv_transpose on each.
GRID = (
  HARNESS
  + r"""
calls = {
  "1d_k5_s2": ((8, 20, 6), (5, 6, 8), dict(stride=2, padding="same")),
  "2d_3x3_s2": ((8, 14, 14, 6), (3, 3, 6, 8), dict(stride=2, padding=1)),
  "2d_3x3_d2": ((8, 14, 14, 6), (3, 3, 6, 8), dict(dilation=2, padding="same")),
  "2d_3x3_g2": ((8, 14, 14, 8), (3, 3, 4, 8), dict(groups=2, padding="same")),
  "2d_3x3_dw": ((8, 14, 14, 6), (3, 3, 1, 6), dict(groups=6, padding="same")),
  "2d_7x7": ((8, 16, 16, 2), (7, 7, 2, 3), dict(padding="same")),
  "3d_3x3x3": ((8, 6, 6, 6, 4), (3, 3, 3, 4, 4), dict(padding="same")),
}
out = {"impls": list(jc.available_impls()), "cases": {}}
for impl in jc.available_impls():
  for call, (x_shape, w_shape, kwargs) in calls.items():
    xi = rng.standard_normal(x_shape).astype(np.float32)
    wi = rng.standard_normal(w_shape).astype(np.float32)
    ops = [("conv", jc.conv)] + [("conv_transpose", jc.conv_transpose)] * (call in ("2d_3x3_s2", "2d_3x3_g2"))
    for op_name, op in ops:
      f = lambda x, w, op=op, impl=impl, kwargs=kwargs: op(x, w, impl=impl, **kwargs)
      try:
        jax.eval_shape(f, xi, wi)
      except ValueError:
        continue
      for kind in ("auto", "explicit"):
        out["cases"][f"{impl}/{call}/{op_name}/{kind}"] = run(with_grads(f), (xi, wi), (P("data"), P()), kind)
print("RESULT " + json.dumps(out))
"""
)


def forced_devices_env(count: int) -> dict[str, str]:
  """The environment of a subprocess whose JAX sees ``count`` CPU devices."""
  import os

  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "JAX_PLATFORMS": "cpu"}


def run_script(script: str) -> dict:
  """Run ``script`` on 2 forced CPU devices and parse the JSON it prints after ``RESULT``."""
  proc = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=forced_devices_env(2), timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.split("RESULT ", 1)[1])


@pytest.fixture(scope="module")
def kernels() -> dict:
  return run_script(KERNELS)


# The per-kernel cases (the kernels fixture, 24 s on a 2-core AVX2 EPYC) and the ops grid (pools,
# bias, vmap, the Flax drop-in, model and spatial splits on both kinds of axes) are one ~20 s
# subprocess per worker each: the slow set runs them (CI's second pytest run); the README's fast set
# runs the layout rules.
ops_grid = pytest.mark.slow


@pytest.fixture(scope="module")
def ops() -> dict:
  return run_script(OPS)


@pytest.fixture(scope="module")
def grid() -> dict:
  return run_script(GRID)


def activation_gathers(case: dict) -> list[str]:
  """The all-gathered shapes with the batch's 8 rows (or 4, a shard's) leading: activations, not weights."""
  return [s for s in case["gathered"] if s.split("[")[1].split(",")[0] in (str(N), str(N // 2))]


ROWS = ["data", None, None, None]


@ops_grid
def test_every_registered_kernel_is_covered(kernels):
  import jaxconv as jc

  assert kernels["devices"] == 2
  # The subprocess enumerated the registry itself: every kernel this process sees, none unserved.
  assert set(jc.available_impls()) <= set(kernels["impls"]) and not kernels["unserved"]
  assert {key.split("/")[0] for key in kernels["cases"]} == set(kernels["impls"])


@ops_grid
@pytest.mark.parametrize("kind", ["auto", "explicit"])
def test_every_kernel_keeps_the_batch_sharded(kernels, kind):
  for impl in kernels["impls"]:
    case = kernels["cases"][f"{impl}/{kind}"]
    y, dx, dw = case["specs"]
    assert y[:1] == ["data"] and dx[:1] == ["data"], (impl, case)
    assert all(s is None for s in (*y[1:], *dx[1:], *dw)), (impl, case)  # dw replicated
    # Nothing is gathered: the kernel gradient is each shard's, all-reduced.
    assert case["collectives"] == ["all-reduce"], (impl, case)
    assert case["error"] < 1e-4, (impl, case)


@pytest.mark.slow
def test_every_kernel_on_every_call_it_serves(grid):
  impls = {key.split("/")[0] for key in grid["cases"]}
  assert impls == set(grid["impls"])  # each kernel serves some of the calls
  failed = {
    key: case
    for key, case in grid["cases"].items()
    if case["specs"][0][:1] != ["data"]
    or case["specs"][1][:1] != ["data"]
    or any(case["specs"][2])
    or case["collectives"] != ["all-reduce"]
    or not case["error"] < 1e-4
  }
  assert not failed


@ops_grid
def test_kernel_gradient_is_all_reduced_not_gathered(kernels):
  case = kernels["cases"]["im2col/auto"]
  assert "all-reduce" in case["collectives"] and not case["gathered"]


@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize(
  "name", ["conv_transpose", "conv_transpose[auto]", "conv_general_dilated", "conv_general_dilated[nhwc]"]
)
@ops_grid
def test_ops_and_their_gradients_keep_the_batch_sharded(ops, name, kind):
  case = ops[f"{name}/{kind}"]
  y, dx, dw = case["specs"]
  assert y[:1] == ["data"] and dx[:1] == ["data"] and not any(dw), case
  assert not case["gathered"] and case["collectives"] == ["all-reduce"], case
  assert case["error"] < 1e-4, case


@ops_grid
@pytest.mark.parametrize("kind", ["auto", "explicit"])
def test_conv_with_a_bias_keeps_the_batch_sharded(ops, kind):
  """The fused bias (oneDNN's, where built): y and dx split like the batch, dw and db all-reduced."""
  case = ops[f"conv+bias/{kind}"]
  y, dx, dw, db = case["specs"]
  assert y[:1] == ["data"] and dx[:1] == ["data"] and not any(dw) and not any(db), case
  assert not case["gathered"] and case["collectives"] == ["all-reduce"], case
  assert case["error"] < 1e-4, case


@ops_grid
@pytest.mark.parametrize("kind", ["auto", "explicit"])
def test_vmap_over_a_batch_sharded_input(ops, kind):
  case = ops[f"vmap/{kind}"]
  y, dx, dw = case["specs"]
  # The vmapped axis folds in after the batch, so each device keeps its rows: nothing gathered.
  assert y[:2] == [None, "data"] and dx[:2] == [None, "data"] and not any(dw), case
  assert case["collectives"] == ["all-reduce"] and case["error"] < 1e-4, case


@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize(
  "name",
  [
    "max_pool",
    "max_pool[overlapping]",
    "max_pool[dilated]",
    "avg_pool",
    "avg_pool[ceil]",
    "adaptive_avg_pool",
    "adaptive_avg_pool[uneven]",
    "adaptive_max_pool",
    "adaptive_max_pool[uneven]",
  ],
)
@ops_grid
def test_pools_and_their_gradients_keep_the_batch_sharded(ops, name, kind):
  case = ops[f"{name}/{kind}"]
  y, dx = case["specs"]
  assert y[:1] == ["data"] and dx[:1] == ["data"], case
  assert case["collectives"] == [] and case["error"] < 1e-5, case


@ops_grid
@pytest.mark.parametrize("kind", ["auto", "explicit"])
def test_flax_drop_in_train_step_stays_data_parallel(ops, kind):
  case = ops[f"nnx_train_step/{kind}"]
  # New parameters replicated, the loss a scalar; gradients all-reduced, no activation gathered.
  assert all(not any(spec) for spec in case["specs"]), case
  assert "all-reduce" in case["collectives"] and not case["gathered"], case
  assert case["error"] < 1e-5, case


@ops_grid
@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize("impl", ["im2col", "onednn"])
def test_kernel_split_over_output_channels_is_model_parallel(ops, impl, kind):
  if f"model/{impl}/{kind}" not in ops:
    pytest.skip(f"{impl} is not available here")
  case = ops[f"model/{impl}/{kind}"]
  y, dx, dw = case["specs"]
  # y and dw keep C_out split; dx sums the channel halves (an all-reduce); nothing is gathered.
  assert y[-1] == "data" and dw[-1] == "data" and not any(dx), case
  assert case["collectives"] == ["all-reduce"] and case["error"] < 1e-4, case


@ops_grid
@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize("impl", ["im2col", "onednn"])
def test_batch_and_model_axes_together(ops, impl, kind):
  if f"batch+model/{impl}/{kind}" not in ops:
    pytest.skip(f"{impl} is not available here")
  case = ops[f"batch+model/{impl}/{kind}"]
  y, dx, dw = case["specs"]
  assert y[-1] == "model" and dw[-1] == "model", case
  assert not activation_gathers(case) and case["error"] < 1e-4, case


@ops_grid
@pytest.mark.parametrize("impl", ["im2col", "onednn"])
def test_spatial_split_is_answered_by_lax_on_explicit_axes(ops, impl):
  if f"spatial/{impl}/explicit" not in ops:
    pytest.skip(f"{impl} is not available here")
  case = ops[f"spatial/{impl}/explicit"]
  y, dx, _ = case["specs"]
  # lax's spatial partitioning: the split stays, halos are exchanged (collective-permute), no gather.
  assert y[:2] == [None, "data"] and dx[:2] == [None, "data"], case
  assert "collective-permute" in case["collectives"] and not case["gathered"], case
  assert case["error"] < 1e-4, case


@ops_grid
@pytest.mark.parametrize("impl", ["im2col", "onednn"])
def test_spatial_split_on_auto_axes_is_moved_to_the_batch_with_a_warning(ops, impl):
  if f"spatial/{impl}/auto" not in ops:
    pytest.skip(f"{impl} is not available here")
  case = ops[f"spatial/{impl}/auto"]
  assert case["error"] < 1e-4, case
  assert "all-to-all" in case["collectives"], case  # moved onto the batch, not gathered for the forward
  assert case["warnings"] and "beyond the batch" in case["warnings"][0] and "impl='lax'" in case["warnings"][0]


# --------------------------------------------------------------------------------------------
# in this process (one device): the layout rules


def test_explicit_layout_rules():
  import jax
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  from jaxconv.kernels.primitives import Layout, explicit_layout

  mesh = jax.sharding.AbstractMesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)

  def aval(shape, *spec):
    return jax.core.ShapedArray(shape, jax.numpy.float32, sharding=NamedSharding(mesh, P(*spec)))

  x, w, dy = (8, 6, 6, 3), (3, 3, 3, 4), (8, 6, 6, 4)
  assert explicit_layout("conv", aval(x), aval(w), 1) == Layout()
  assert explicit_layout("conv", aval(x, "data"), aval(w), 1) == Layout(("data",), ())
  assert explicit_layout("conv", aval(x, "data"), aval(w, None, None, None, "model"), 1) == Layout(
    ("data",), ("model",)
  )
  assert not explicit_layout("conv", aval(x, "data"), aval(w, None, None, None, "model"), 2).native  # groups
  assert not explicit_layout("conv", aval(x, None, "data"), aval(w), 1).native  # spatial
  assert not explicit_layout("conv", aval(x, "data"), aval(w, None, None, None, "data"), 1).native  # one axis twice
  assert explicit_layout(
    "input_grad", aval(dy, "data", None, None, "model"), aval(w, None, None, None, "model"), 1
  ).native
  assert explicit_layout("kernel_grad", aval(x, "data"), aval(dy, "data"), 1) == Layout(("data",), ())
  assert not explicit_layout("kernel_grad", aval(x, "data"), aval(dy), 1).native  # dy not split like x


def test_auto_layout_rules():
  import jax
  from jax.sharding import AxisType
  from jax.sharding import PartitionSpec as P

  from jaxconv.geometry import conv_geometry
  from jaxconv.kernels.primitives import Layout, auto_layout

  mesh = jax.sharding.AbstractMesh((2, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  g = conv_geometry((8, 6, 6, 3), (3, 3, 3, 4), "float32")
  ranks = (4, 4)
  assert auto_layout(mesh, (P("data"), P()), ranks, g) == Layout(("data",), ())
  assert auto_layout(mesh, (P(), P(None, None, None, "model")), ranks, g) == Layout((), ("model",))
  assert auto_layout(mesh, (P("data"), P(None, None, None, "model")), ranks, g) == Layout(("data",), ("model",))
  # A spatial split moves onto the batch; a kernel split on the batch's axis is gathered.
  assert auto_layout(mesh, (P(None, "data"), P()), ranks, g) == Layout(("data",), ())
  assert auto_layout(mesh, (P("data"), P(None, None, None, "data")), ranks, g) == Layout(("data",), ())
  # Splits that do not divide are not taken: a batch of 2 over 2 x 2 devices, 4 channels over 8.
  small = conv_geometry((2, 6, 6, 3), (3, 3, 3, 4), "float32")
  assert auto_layout(mesh, (P(None, ("data", "model")), P()), ranks, small) == Layout(("data",), ())
  wide = jax.sharding.AbstractMesh((8,), ("model",), axis_types=(AxisType.Auto,))
  assert auto_layout(wide, (P(), P(None, None, None, "model")), ranks, g) == Layout(("model",), ())
  # The kernel gradient: dy's batch is the batch, its last axis C_out.
  assert auto_layout(mesh, (P("data"), P("data", None, None, "model")), ranks, g) == Layout(("data",), ("model",))
