"""jaxconv.kernels.register: re-registration, replace=True everywhere a kernel runs, the one impl check."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from references import LAX_DIMS, assert_close, random

import jaxconv as jc
from jaxconv import kernels, nn
from jaxconv.kernels import registry
from jaxconv.kernels.lax import conv_lax

ROOT = Path(__file__).resolve().parent.parent


def scaled(factor: float) -> kernels.registry.Forward:
  """A kernel: lax's correlation times ``factor`` (its transposes derived by JAX)."""

  def forward(x: jax.Array, w: jax.Array, g) -> jax.Array:
    return conv_lax(x, w, g) * factor

  return forward


@pytest.fixture
def name() -> Iterator[str]:
  """A fresh kernel name, unregistered again (and compiled programs dropped) after the test."""
  yield "test_register_kernel"
  registry._REGISTRY.pop("test_register_kernel", None)
  jax.clear_caches()


def test_registering_a_name_twice_raises_naming_it(name):
  kernels.register(name)(scaled(1.0))
  with pytest.raises(ValueError, match=f"a kernel named '{name}' is already registered; pass replace=True"):
    kernels.register(name)(scaled(2.0))
  with pytest.raises(ValueError, match="a kernel named 'lax' is already registered"):
    kernels.register("lax")(scaled(2.0))
  assert kernels.get("lax").forward is conv_lax  # the refusal changed nothing
  assert kernels.available().count(name) == 1


@pytest.mark.parametrize(
  "args, kwargs, message",
  [((3,), {}, "^name must be a non-empty string"), (("",), {}, "^name"), (("x",), {"replace": 1}, "^replace")],
)
def test_register_checks_its_arguments(args, kwargs, message):
  with pytest.raises(TypeError, match=message):
    kernels.register(*args, **kwargs)


@pytest.mark.slow  # 3.5 s on a 2-core AVX2 EPYC
def test_replace_reaches_eager_jit_grad_and_layers(rng, name):
  """After replace=True, every path runs the new function, including programs compiled before it."""
  x, w, dy = random(rng, (2, 7, 7, 3), (3, 3, 3, 4), (2, 5, 5, 4))
  reference = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=LAX_DIMS[2])
  _, pullback = jax.vjp(
    lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=LAX_DIMS[2]), x, w
  )
  ref_dx, ref_dw = pullback(dy)
  kernels.register(name)(scaled(1.0))

  jitted = jax.jit(lambda x, w: jc.conv(x, w, impl=name))
  grads = jax.jit(jax.grad(lambda x, w: jnp.vdot(jc.conv(x, w, impl=name), dy), argnums=(0, 1)))
  transpose = jax.jit(lambda dy, w: jc.conv_transpose(dy, w.swapaxes(-1, -2), impl=name))
  layer = nn.Conv(3, 4, (3, 3), use_bias=False, impl=name, rngs=nnx.Rngs(0))
  layer.kernel[...] = w
  layer_jit = nnx.jit(lambda m, x: m(x))
  vmapped = jax.jit(jax.vmap(lambda x: jc.conv(x, w, impl=name)))

  def run() -> dict[str, object]:
    return {
      "eager": jc.conv(x, w, impl=name),
      "jit": jitted(x, w),
      "grad": grads(x, w),
      "conv_transpose": transpose(dy, w),
      "layer": layer(x),
      "layer under nnx.jit": layer_jit(layer, x),
      "vmap": vmapped(x[:, None])[:, 0],
    }

  def check(results: dict[str, object], factor: float) -> None:
    for what in ("eager", "jit", "layer", "layer under nnx.jit", "vmap"):
      assert_close(results[what], factor * reference, 1e-5, f"{what}, factor {factor}")
    dx, dw = results["grad"]  # type: ignore[misc]
    assert_close(dx, factor * ref_dx, 1e-5, f"grad x, factor {factor}")
    assert_close(dw, factor * ref_dw, 1e-5, f"grad w, factor {factor}")
    assert_close(results["conv_transpose"], factor * ref_dx, 1e-5, f"conv_transpose, factor {factor}")

  check(run(), 1.0)  # compiles every program with the first function
  kernels.register(name, replace=True)(scaled(2.0))
  check(run(), 2.0)
  assert kernels.available().count(name) == 1
  assert kernels.get(name).description == ""  # the new kernel's own fields, not the old one's


def test_replace_of_a_kernel_with_its_own_transposes(rng, name):
  """A replacement's hand-written input_grad / kernel_grad are what grad runs."""
  x, w = random(rng, (1, 5, 5, 1), (3, 3, 1, 1))
  kernels.register(name)(scaled(1.0))
  grad = jax.jit(jax.grad(lambda x, w: jc.conv(x, w, impl=name).sum(), argnums=(0, 1)))
  first = grad(x, w)
  zeros_dx = lambda dy, w, g: jnp.zeros(g.x_shape, dy.dtype)
  zeros_dw = lambda x, dy, g: jnp.zeros(g.w_shape, x.dtype)
  kernels.register(name, input_grad=zeros_dx, kernel_grad=zeros_dw, replace=True)(scaled(1.0))
  assert np.abs(np.asarray(first[0])).max() > 0
  assert all(not np.any(np.asarray(g)) for g in grad(x, w))


def test_fused_bias_functions_are_what_runs(rng, name):
  """A kernel's forward_bias and kernel_grad_bias serve b's forward and gradient: no add, no reduction of its own."""
  x, w, b = random(rng, (2, 6, 6, 2), (3, 3, 2, 3), (3,))
  (ct,) = random(rng, (2, 4, 4, 3))
  lax_kernel_grad = lambda x, dy, g: jax.vjp(lambda w: conv_lax(x, w, g), jnp.zeros(g.w_shape, x.dtype))[1](dy)[0]
  # Marked: the fused forward adds 1 more, the fused gradient doubles b's; what runs shows which ran.
  kernels.register(
    name,
    forward_bias=lambda x, w, b, g: conv_lax(x, w, g) + b + 1.0,
    kernel_grad_bias=lambda x, dy, g: (lax_kernel_grad(x, dy, g), 2.0 * dy.sum(axis=(0, 1, 2))),
  )(scaled(1.0))
  f = lambda x, w, b: jc.conv(x, w, b, impl=name)
  y, pull = jax.vjp(f, x, w, b)
  want_y, want_pull = jax.vjp(lambda x, w, b: jc.conv(x, w, b, impl="lax"), x, w, b)
  assert_close(y, want_y + 1.0, 1e-5)
  (dx, dw, db), (want_dx, want_dw, want_db) = pull(ct), want_pull(ct)
  assert_close(dx, want_dx, 1e-5)
  assert_close(dw, want_dw, 1e-5)
  assert_close(db, 2.0 * want_db, 1e-5)
  # Without b (or with only b differentiated) the plain functions run.
  assert_close(jc.conv(x, w, impl=name), jc.conv(x, w, impl="lax"), 1e-5)
  assert_close(jax.grad(lambda b: f(x, w, b).sum())(b), jax.grad(lambda b: jc.conv(x, w, b, impl="lax").sum())(b), 1e-5)


def test_replace_registers_a_new_name_too(name):
  kernels.register(name, replace=True)(scaled(1.0))
  assert name in kernels.available()


def test_one_impl_check_and_distinct_defaults():
  """jc.conv, the layers and conv_general_dilated all refuse through kernels.check, with its message."""
  assert (kernels.FUNCTION_DEFAULT, kernels.LAYER_DEFAULT, kernels.DROP_IN_DEFAULT) == ("lax", "auto", "auto")
  assert kernels.check(None) == "lax" and kernels.check(None, default=kernels.LAYER_DEFAULT) == "auto"
  assert kernels.check("im2col") == "im2col" and nn.default_impl() == kernels.layer_default() == "auto"
  with pytest.raises(ValueError) as expected:
    kernels.check("nope")
  x, w = np.ones((1, 5, 5, 1), np.float32), np.ones((3, 3, 1, 1), np.float32)
  for call in (
    lambda: jc.conv(x, w, impl="nope"),
    lambda: jc.correlate(x[0, ..., 0], w[..., 0, 0], impl="nope"),
    lambda: nn.Conv(1, 1, (3, 3), impl="nope", rngs=nnx.Rngs(0)),
    lambda: jc.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=LAX_DIMS[2], impl="nope"),
  ):
    with pytest.raises(ValueError) as raised:
      call()
    assert str(raised.value) == str(expected.value)
  with pytest.raises(TypeError, match="^impl must be a string naming a kernel"):
    kernels.check(None, default=None)
  with pytest.raises(TypeError, match="^impl must be a string naming a kernel"):
    jc.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=LAX_DIMS[2], impl=None)


@pytest.mark.slow  # a pytest run of the transform grid in a subprocess (6 s)
def test_transform_grid_picks_up_a_registered_kernel(tmp_path):
  """A kernel registered before collection (here by a pytest plugin) joins test_transforms' impl grid."""
  (tmp_path / "my_kernels_plugin.py").write_text(
    textwrap.dedent(
      """
      from jaxconv import kernels
      from jaxconv.kernels.lax import conv_lax

      @kernels.register("my_plugin_kernel")
      def my_plugin_kernel(x, w, g):
          return conv_lax(x, w, g)
      """
    )
  )
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
  command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", "-p", "my_kernels_plugin"]
  out = subprocess.run(
    [*command, "tests/test_transforms.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  ids = [line for line in out.stdout.splitlines() if "my_plugin_kernel" in line]
  lax_ids = [line for line in out.stdout.splitlines() if "[lax" in line or "-lax]" in line or "-lax-" in line]
  assert ids and len(ids) == len(lax_ids), (len(ids), len(lax_ids))
