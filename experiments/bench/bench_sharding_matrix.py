"""The sharding matrix: every op and gradient inside a batch-sharded ``jax.jit``, on Auto and Explicit axes.

For each of 13 ops and gradients (``jc.conv`` with lax, im2col, toeplitz, auto and onednn;
``conv_transpose``; the four pools; ``conv_general_dilated``; the input and kernel gradient
through ``auto``), on a 1-D mesh of 2 forced CPU devices with Auto axes and with
``jax.make_mesh``'s default Explicit axes (inside ``jax.set_mesh``), it compiles the call on x
``(8, 14, 14, 6)`` sharded on the batch and prints one row: the output's partition spec,
whether the compiled HLO has an ``all-gather`` (of activations: nothing else is sharded) or an
``all-reduce``, whether the values equal the unsharded call, or the error.

    python experiments/bench/bench_sharding_matrix.py [--impls]   # --impls: one row per registered kernel too

It sets ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` itself when JAX is not yet imported.
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxconv as jc

Op = Callable[[jax.Array, jax.Array], jax.Array]


def _vjp_x(f: Op) -> Op:
  """x -> the input gradient of ``sum(f(x, w) * ct)`` with a fixed cotangent pattern."""
  return lambda x, w: jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w))))(x)


def _vjp_w(f: Op) -> Op:
  return lambda x, w: jax.grad(lambda w: jnp.sum(jnp.sin(f(x, w))))(w)


def _cgd(x: jax.Array, w: jax.Array) -> jax.Array:
  return jc.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


# Kernels to try per registered impl, first served first: (w shape, groups) on x (8, 14, 14, 6).
CANDIDATES = (((5, 5, 6, 16), 1), ((3, 3, 6, 16), 1), ((3, 3, 2, 6), 3), ((3, 3, 1, 6), 6))


def conv_op(impl: str, groups: int = 1) -> Op:
  """``jc.conv`` with "same" padding on the kernel ``impl``."""
  return lambda x, w: jc.conv(x, w, padding="same", groups=groups, impl=impl)


def served(impl: str, x: np.ndarray, rng: np.random.Generator) -> tuple[int, np.ndarray] | None:
  """(groups, w) of the first candidate kernel that ``impl`` serves on x, or None."""
  for shape, groups in CANDIDATES:
    w = rng.standard_normal(shape).astype(np.float32)
    try:
      jax.eval_shape(conv_op(impl, groups), x, w)
    except ValueError:
      continue
    return groups, w
  return None


def ops(impls: bool, x: np.ndarray, w: np.ndarray) -> dict[str, tuple[Op, np.ndarray]]:
  """The 13 ops and gradients of the issue as (op, w) (and, with ``impls``, every registered kernel's conv, dx, dw)."""
  conv = conv_op
  table: dict[str, Op] = {f"conv[{i}]": conv(i) for i in ("lax", "im2col", "toeplitz", "auto", "onednn")}
  table["conv_transpose"] = lambda x, w: jc.conv_transpose(x, w, stride=2, padding="same")
  table["max_pool"] = lambda x, w: jc.max_pool(x, 2)
  table["avg_pool"] = lambda x, w: jc.avg_pool(x, 2)
  table["adaptive_avg_pool"] = lambda x, w: jc.adaptive_avg_pool(x, 3)
  table["adaptive_max_pool"] = lambda x, w: jc.adaptive_max_pool(x, 3)
  table["conv_general_dilated"] = _cgd
  table["dx[auto]"] = _vjp_x(conv("auto"))
  table["dw[auto]"] = _vjp_w(conv("auto"))
  cases = {name: (op, w) for name, op in table.items()}
  rng = np.random.default_rng(1)
  for impl in jc.available_impls() if impls else ():
    found = served(impl, x, rng)
    if found is None:
      print(f"# {impl}: serves none of the candidate calls, skipped")
      continue
    groups, wi = found
    cases[f"conv[{impl}]"] = (conv(impl, groups), wi)
    cases[f"dx[{impl}]"] = (_vjp_x(conv(impl, groups)), wi)
    cases[f"dw[{impl}]"] = (_vjp_w(conv(impl, groups)), wi)
  return cases


def mesh_of(kind: str) -> jax.sharding.Mesh:
  """A 2-device mesh ``("data",)`` with Auto or Explicit axes."""
  axis_type = AxisType.Auto if kind == "auto" else AxisType.Explicit
  return jax.make_mesh((2,), ("data",), axis_types=(axis_type,))


def run_case(name: str, op: Op, kind: str, x: np.ndarray, w: np.ndarray) -> str:
  """One row of the matrix: output spec, collectives, values against the unsharded call, or the error."""
  mesh = mesh_of(kind)
  want = np.asarray(jax.jit(op)(x, w))
  try:
    with jax.set_mesh(mesh):
      xs = jax.device_put(x, NamedSharding(mesh, P("data")))
      ws = jax.device_put(w, NamedSharding(mesh, P()))
      fn = jax.jit(op)
      text = fn.lower(xs, ws).compile().as_text()
      got = fn(xs, ws)
  except Exception as e:
    return f"ERROR {type(e).__name__}: {(str(e).splitlines() or [''])[0][:90]}"
  spec = tuple(got.sharding.spec) if isinstance(got.sharding, NamedSharding) else got.sharding
  gathers = "all-gather" if re.search(r"\ball-gather(-start)?\(", text) else "-"
  reduces = "all-reduce" if re.search(r"\ball-reduce(-start)?\(", text) else "-"
  equal = np.allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))
  batch = "sharded" if spec and spec[0] == "data" else "replicated"
  if name.startswith("dw["):
    batch = "(kernel)"
  return f"{batch:<10} {gathers:<10} {reduces:<10} {'equal' if equal else 'DIFFERENT'}  spec={spec}"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
  parser.add_argument("--impls", action="store_true", help="also every registered kernel's conv, dx and dw")
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 14, 14, 6)).astype(np.float32)
  w = rng.standard_normal((5, 5, 6, 16)).astype(np.float32)
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices, {os.cpu_count()} cores")
  print(f"{'op':<22} {'axes':<9} {'batch':<10} {'gather':<10} {'reduce':<10} values")
  for name, (op, wi) in ops(args.impls, x, w).items():
    for kind in ("auto", "explicit"):
      print(f"{name:<22} {kind:<9} {run_case(name, op, kind, x, wi)}", flush=True)


if __name__ == "__main__":
  main()
