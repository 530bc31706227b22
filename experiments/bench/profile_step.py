"""Where a LeNet-5 training step's time goes: each part's forward + backward, jaxconv beside PyTorch eager.

  python experiments/bench/profile_step.py [--impl onednn --impl toeplitz ...] [--dtype float32 --dtype bfloat16]
      [--repeats 200] [--out FILE]

The modern LeNet-5 at batch 128 on 28x28x1 images is cut into the parts of its training step:
conv1 (gradients of its parameters only: the images need none), ReLU + 2x2 max-pool after it,
conv2, ReLU + pool after it, the dense classifier, the cross-entropy, and the Adam update. Each part
runs jitted on its real input shapes as forward then backward (``jax.vjp``), against a cotangent
of ones, and the same part in PyTorch eager (autograd's forward + backward; ``optimizer.step`` for
Adam). The whole step (``jaxconv.training.make_train_step``) is timed alone and as one of the 50
steps of the compiled loop the training runs (``make_train_steps``), per step. Times are medians
of ``--repeats`` calls, in ms; one jitted call's dispatch floor (a call on the same arguments that
does nothing) is printed so that it can be told apart from work.

Parts timed alone are not what they cost inside the step: there XLA fuses each layer's
elementwise work with its neighbours' and recomputes cheap producers inside every consumer. So
``--trace`` (the default) also profiles the compiled loop with ``jax.profiler`` and charges each
XLA op to the layer whose ``jax.named_scope`` (``LeNet`` scopes each layer) its ``op_name`` holds,
forward or backward: the indented rows, ms per step. jaxconv's parts and steps are compiled with
the training programs' XLA options (``compiler_options`` in ``configs/default.py``);
``--compiler_options=xla_defaults`` compiles them with XLA's defaults, and ``both`` profiles each
kernel both ways (the second column named "XLA defaults"). Last, the step's GEMM bound: its FLOPs (XLA's
cost analysis of the step on the lax kernel) at the rate of a jitted float32 2048^3 ``jnp.dot``
timed in the same run.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from benchmarks.harness import environment, gemm_peak_gflops
from configs import default
from experiments.bench.render_results import step_columns
from jaxconv import training
from jaxconv.models import LeNet
from jaxconv.models.lenet import FEATURE_NAMES

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("impl", None, "jaxconv kernels to profile (default: auto and toeplitz).")
flags.DEFINE_integer("repeats", 200, "Timed calls per part.")
flags.DEFINE_integer("batch_size", 128, "Images per step.")
flags.DEFINE_boolean("torch", True, "Also profile PyTorch eager (skipped if torch is not installed).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_enum(
  "compiler_options",
  "programs",
  ["programs", "xla_defaults", "both"],
  "Compile jaxconv with the training programs' XLA options, XLA's defaults, or both (one column each).",
)
flags.DEFINE_multi_enum(
  "dtype",
  ["float32"],
  ["float32", "bfloat16"],
  "LeNet's computation dtypes (its dtype keyword; parameters stay float32), one column each.",
)
flags.DEFINE_boolean("trace", True, "Also break the compiled loop's steps down by layer from a jax.profiler trace.")

PARTS = ("conv1", "relu+pool1", "conv2", "relu+pool2", "classifier", "loss", "adam")
LOOP_STEPS = 50


def median_ms(call: Callable[[], object], repeats: int) -> float:
  """Median wall-clock ms of ``call()`` (which must block until its work is done), after two warm-up calls."""
  call(), call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def blocking(fn: Callable, *args, options: dict | None = None) -> Callable[[], object]:
  """``fn(*args)`` jitted (with XLA ``options``), as a call that waits for its result."""
  jitted = jax.jit(fn, compiler_options=options or None)
  return lambda: jax.block_until_ready(jitted(*args))


def vjp_of(fn: Callable, *primals) -> Callable:
  """``primals -> fn``'s forward and its vjp against a cotangent of ones: forward + backward of a part."""

  def run(*primals):
    out, pullback = jax.vjp(fn, *primals)
    return pullback(jax.tree.map(jnp.ones_like, out))

  return run


def jax_parts(impl: str, repeats: int, batch: int, options: dict, dtype: str = "float32") -> dict[str, float]:
  """ms per part of the jaxconv LeNet with kernel ``impl`` computing in ``dtype``, compiled with XLA ``options``;
  also the whole step alone and in the loop."""
  model = LeNet(impl=impl, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
  conv1, act1, pool1, conv2, act2, pool2 = model.features.layers
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((batch, 28, 28, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)

  def layer(module: nnx.Module) -> tuple[Callable, nnx.State]:
    graphdef, params = nnx.split(module, nnx.Param)
    return (lambda p, x: nnx.merge(graphdef, p)(x)), params

  f1, p1 = layer(conv1)
  f2, p2 = layer(conv2)
  fc, pc = layer(model.classifier)
  h1 = f1(p1, images)
  a1 = pool1(act1(h1))
  h2 = f2(p2, a1)
  a2 = pool2(act2(h2))
  logits = fc(pc, a2)
  tx = optax.adam(1e-3)
  graphdef, state = training.create_state(model, tx)
  grads = jax.tree.map(jnp.ones_like, state.params)

  def adam(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  calls = {
    # The images are an argument, not a constant XLA could fold; only the parameters get gradients.
    "conv1": blocking(lambda p, x: vjp_of(lambda p: f1(p, x), p)(p), p1, images, options=options),
    "relu+pool1": blocking(vjp_of(lambda h: pool1(act1(h)), h1), h1, options=options),
    "conv2": blocking(vjp_of(f2, p2, a1), p2, a1, options=options),
    "relu+pool2": blocking(vjp_of(lambda h: pool2(act2(h)), h2), h2, options=options),
    "classifier": blocking(vjp_of(fc, pc, a2), pc, a2, options=options),
    "loss": blocking(
      vjp_of(lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean(), logits),
      logits,
      options=options,
    ),
    "adam": blocking(adam, grads, state.opt_state, state.params, options=options),
  }
  result = {name: median_ms(call, repeats) for name, call in calls.items()}
  result["sum of parts"] = sum(result[name] for name in PARTS)
  step = training.make_train_step(graphdef, tx)  # plain cross-entropy, no augmentation
  key = jax.random.key(0)
  data = training.Batch(images, labels)
  result["step"] = median_ms(blocking(step, state, data, key, options=options), repeats)
  zero, idx = training.zero_metrics(), jnp.tile(jnp.arange(batch), (LOOP_STEPS, 1))
  args = (state, zero, data, idx, jnp.asarray(0), jnp.asarray(LOOP_STEPS), key)
  steps = jax.jit(training.make_train_steps(step)).lower(*args).compile(options or None)  # timed and traced below
  loop = lambda: jax.block_until_ready(steps(*args))
  result[f"step in a {LOOP_STEPS}-step loop"] = median_ms(loop, max(repeats // LOOP_STEPS, 5)) / LOOP_STEPS
  result["dispatch floor"] = median_ms(blocking(lambda *a: a[0], p2, a1), repeats)
  if FLAGS.trace:
    result["in the loop"] = traced_breakdown(steps, args, LOOP_STEPS)
  return result


# LeNet's scopes -> the parts of the table: an activation and the pool after it share fusions.
SCOPES = dict(zip(FEATURE_NAMES, ("conv1", "relu+pool1", "relu+pool1", "conv2", "relu+pool2", "relu+pool2")))
SCOPES["classifier"] = "classifier"
REST = "loss, Adam, loop"


def _part(op_name: str) -> str:
  """The part (from LeNet's named scopes) and direction of an HLO op, from its ``op_name`` metadata."""
  scope = next((part for name, part in SCOPES.items() if re.search(rf"\b{name}\b", op_name)), None)
  return REST if scope is None else f"{scope} {'backward' if 'transpose(' in op_name else 'forward'}"


def traced_breakdown(compiled, args: tuple, steps: int, calls: int = 4) -> dict[str, float]:
  """ms per step of each part of ``compiled(*args)`` (``steps`` steps per call), from a trace of ``calls`` calls.

  Each XLA op (a fusion, a dot, a kernel's custom call) is charged to the part its ``op_name``
  names; ops running at the same time on different threads both count, so the parts can add up to
  more than the step's wall time ("wall", measured around the traced calls).
  """
  parts = {}
  for line in compiled.as_text().splitlines():
    match = re.match(r"\s*(?:ROOT )?%([\w.-]+) = .*op_name=\"([^\"]*)\"", line)
    if match:
      parts[match.group(1)] = _part(match.group(2))
  jax.block_until_ready(compiled(*args))
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory)
    start = time.perf_counter()
    for _ in range(calls):
      jax.block_until_ready(compiled(*args))
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    (path,) = Path(directory).rglob("*.trace.json.gz")
    events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
  totals: dict[str, float] = collections.defaultdict(float)
  for event in events:
    if event.get("ph") == "X" and event.get("name") in parts:
      totals[parts[event["name"]]] += event["dur"] / 1e3  # microseconds -> ms
  order = [f"{p} {d}" for d in ("forward", "backward") for p in dict.fromkeys(SCOPES.values())] + [REST]
  result = {f"  {name}": totals[name] / (calls * steps) for name in order if name in totals}
  result["  sum of ops"] = sum(totals.values()) / (calls * steps)
  result["  wall"] = 1e3 * wall / (calls * steps)
  return result


def torch_parts(repeats: int, batch: int) -> tuple[dict[str, float], str, int]:
  """ms per part of the same LeNet in PyTorch eager, the whole step, torch's version and threads."""
  import torch
  from torch import nn

  from experiments.lenet.torch_twin import torch_lenet

  torch.manual_seed(0)
  model = torch_lenet()
  conv1, act1, pool1, conv2, act2, pool2 = model[:6]
  classifier = model[6:]
  opt = torch.optim.Adam(model.parameters(), 1e-3)
  images = torch.randn(batch, 1, 28, 28)
  labels = torch.randint(0, 10, (batch,))
  with torch.no_grad():
    h1 = conv1(images)
    a1 = pool1(act1(h1))
    h2 = conv2(a1)
    a2 = pool2(act2(h2))
    logits = classifier(a2)

  def fwd_bwd(fn: Callable, x: torch.Tensor | None) -> Callable[[], None]:
    def run() -> None:
      model.zero_grad(set_to_none=True)
      inp = x if x is None else x.detach().requires_grad_()
      out = fn(inp)
      out.backward(torch.ones_like(out))

    return run

  loss = lambda z: nn.functional.cross_entropy(z, labels)
  calls = {
    "conv1": fwd_bwd(lambda _: conv1(images), None),
    "relu+pool1": fwd_bwd(lambda h: pool1(act1(h)), h1),
    "conv2": fwd_bwd(conv2, a1),
    "relu+pool2": fwd_bwd(lambda h: pool2(act2(h)), h2),
    "classifier": fwd_bwd(classifier, a2),
    "loss": fwd_bwd(loss, logits),
  }
  result = {name: median_ms(call, repeats) for name, call in calls.items()}
  for p in model.parameters():
    p.grad = torch.ones_like(p)
  result["adam"] = median_ms(opt.step, repeats)
  result["sum of parts"] = sum(result[name] for name in PARTS)

  def step() -> None:
    opt.zero_grad(set_to_none=True)
    loss(model(images)).backward()
    opt.step()

  result["step"] = median_ms(step, repeats)
  return result, torch.__version__, torch.get_num_threads()


def step_gflop(batch: int) -> float:
  """GFLOP of one LeNet training step, as XLA's cost analysis counts the step on the lax kernel.

  The lax kernel's convolutions are XLA ops that the cost analysis counts (a custom call, such as
  oneDNN's, counts nothing), so this is the step's arithmetic whatever kernel runs it.
  """
  model = LeNet(impl="lax", rngs=nnx.Rngs(0))
  tx = optax.adam(1e-3)
  graphdef, state = training.create_state(model, tx)
  data = training.Batch(jnp.zeros((batch, 28, 28, 1)), jnp.zeros((batch,), jnp.int32))
  compiled = jax.jit(training.make_train_step(graphdef, tx)).lower(state, data, jax.random.key(0)).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return float(analysis["flops"]) / 1e9


def main(argv: list[str]) -> None:
  """Profile every impl (and torch) and print one table of ms per part."""
  del argv
  impls = FLAGS.impl or ["auto", "toeplitz"]
  results: dict = {
    "env": environment(),
    "load_average_before": os.getloadavg(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "ms": {},
  }
  programs = default.get_config().compiler_options.to_dict()
  results["compiler_options"] = programs if FLAGS.compiler_options != "xla_defaults" else {}
  variants = {
    "programs": [("", programs)],
    "xla_defaults": [("", {})],
    "both": [("", programs), (" (XLA defaults)", {})],
  }
  for impl in impls:
    for dtype in FLAGS.dtype:
      for suffix, options in variants[FLAGS.compiler_options]:
        name = f"jaxconv {impl}{'' if dtype == 'float32' else ' ' + dtype}{suffix}"
        results["ms"][name] = jax_parts(impl, FLAGS.repeats, FLAGS.batch_size, options, dtype)
  if FLAGS.torch:
    try:
      ms, version, threads = torch_parts(FLAGS.repeats, FLAGS.batch_size)
      results["ms"][f"torch {version}"], results["torch_threads"] = ms, threads
    except ImportError:
      print("torch is not installed: profiling jaxconv only")
  results["load_average_after"] = os.getloadavg()
  # The step's floor if all its arithmetic ran at the rate of XLA's best float32 GEMM, measured here.
  results["step_gflop"] = step_gflop(FLAGS.batch_size)
  results["gemm_peak_gflops"] = gemm_peak_gflops()
  results["gemm_bound_ms"] = 1e3 * results["step_gflop"] / results["gemm_peak_gflops"]
  columns = list(results["ms"])
  flat, rows = step_columns(results["ms"])
  print(
    f"\nbatch {FLAGS.batch_size}, ms per call (median of {FLAGS.repeats}), load average "
    f"{results['load_average_before'][0]:.1f} -> {results['load_average_after'][0]:.1f}, "
    f"XLA_FLAGS={results['xla_flags']!r}"
  )
  width = max(18, *(len(c) + 2 for c in columns))
  print(f"{'part':<24}" + "".join(f"{c:>{width}}" for c in columns))
  in_loop = next(iter(flat.values()), {})
  if any(k.startswith("  ") for k in in_loop):
    print("(indented rows: ms per step of the compiled loop's ops by layer, from a profiler trace)")
  for row in rows:
    cells = (flat[c].get(row) for c in columns)
    print(f"{row:<24}" + "".join(f"{'-' if v is None else f'{v:.3f}':>{width}}" for v in cells))
  print(
    f"GEMM-bound step: {results['step_gflop']:.3f} GFLOP (XLA's count of the step on lax) at the "
    f"{results['gemm_peak_gflops']:.0f} GFLOP/s of a jitted float32 2048^3 jnp.dot = {results['gemm_bound_ms']:.2f} ms"
  )
  if FLAGS.out:
    Path(FLAGS.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
