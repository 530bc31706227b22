"""impl="tuned": a supported, measured choice, cached on disk, reused by other processes, robust to damage.

Every test measures on tiny shapes with one timed repeat and its own cache directory
(``$JAXCONV_CACHE_DIR``); no test asserts anything about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv import kernels
from jaxconv.geometry import conv_geometry
from jaxconv.kernels import auto, registry, tuned

ROOT = Path(__file__).resolve().parent.parent
X_SHAPE, W_SHAPE = (2, 9, 9, 3), (3, 3, 3, 4)
FAST = ["lax", "im2col"]  # the candidates where a test needs only the cache's mechanics


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
  """One cache directory for the tests that may share a measurement (it is slow: every kernel compiles)."""
  return tmp_path_factory.mktemp("tuned_shared")


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
  """A fresh cache directory, one timed repeat."""
  monkeypatch.setenv(tuned.CACHE_DIR_ENV, str(tmp_path))
  monkeypatch.setenv(tuned.REPEATS_ENV, "1")
  return tmp_path


def geometry(x_shape=X_SHAPE, w_shape=W_SHAPE, padding="same"):
  return conv_geometry(x_shape, w_shape, jnp.float32, padding=padding)


def subprocess_env(cache_dir: Path) -> dict[str, str]:
  return {**os.environ, tuned.CACHE_DIR_ENV: str(cache_dir), tuned.REPEATS_ENV: "1", "PYTHONPATH": str(ROOT)}


def run_python(code: str, cache_dir: Path, **kwargs) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-c", textwrap.dedent(code)],
    env=subprocess_env(cache_dir),
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    **kwargs,
  )


def finish(proc: subprocess.Popen) -> str:
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return out


def test_tuned_is_registered_as_a_dispatcher():
  assert "tuned" in jc.available_impls() and kernels.get("tuned").dispatch is not None
  assert "tuned" not in tuned.candidates(geometry()) and "auto" not in tuned.candidates(geometry())


def test_cache_path_follows_jaxconv_cache_dir_then_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv(tuned.CACHE_DIR_ENV, str(tmp_path / "a"))
  assert tuned.cache_path() == str(tmp_path / "a" / "tuned.json")
  monkeypatch.delenv(tuned.CACHE_DIR_ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert tuned.cache_path() == str(tmp_path / "xdg" / "jaxconv" / "tuned.json")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert tuned.cache_path() == os.path.join(os.path.expanduser("~"), ".cache", "jaxconv", "tuned.json")


def test_geometry_key_names_everything_the_choice_depends_on():
  key = tuned.geometry_key(conv_geometry((2, 9, 9, 4), (3, 3, 2, 6), jnp.bfloat16, stride=2, padding=1, groups=2))
  assert key == "x=2x9x9x4 w=3x3x2x6 stride=2,2 dilation=1,1 padding=1:1,1:1 groups=2 bfloat16"


def test_picks_a_supported_kernel_and_stores_it(monkeypatch, shared_cache):
  monkeypatch.setenv(tuned.CACHE_DIR_ENV, str(shared_cache))
  monkeypatch.setenv(tuned.REPEATS_ENV, "1")
  g = geometry()
  choice = tuned.choose(g)
  assert choice in tuned.candidates(g) and kernels.get(choice).refusal(g) is None
  data = json.loads((shared_cache / "tuned.json").read_text())
  info = tuned.machine()
  key = f"{tuned.machine_id(info)} {tuned.geometry_key(g)}"
  entry = data["choices"][key]
  assert entry["impl"] == choice and sorted(entry["candidates"]) == sorted(tuned.candidates(g))
  assert set(entry["ms"]) <= set(entry["candidates"]) and choice == min(entry["ms"], key=entry["ms"].get)
  assert data["machines"][tuned.machine_id(info)] == info
  assert info["cores"] == os.cpu_count() and set(info) >= {"cpu", "isa", "jax", "jaxlib", "onednn", "jaxconv"}


@pytest.mark.slow  # 5 s on a 2-core AVX2 EPYC: a second process
def test_another_process_reuses_the_choice_without_measuring(shared_cache):
  # Both sides in fresh processes: a pytest worker's registry may hold kernels other tests added,
  # and a different candidate set rightly makes tuned measure again.
  code = f"""
    import jax, jax.numpy as jnp, jaxconv as jc
    from jaxconv.kernels import tuned
    x, w = jnp.ones({X_SHAPE}), jnp.ones({W_SHAPE})
    jax.jit(jax.grad(lambda x, w: jc.conv(x, w, padding="same", impl="tuned").sum()))(x, w)
    from jaxconv.geometry import conv_geometry
    print(len(tuned._measured), tuned.choose(conv_geometry({X_SHAPE}, {W_SHAPE}, "float32", padding="same")))
    """
  first = finish(run_python(code, shared_cache)).split()
  second = finish(run_python(code, shared_cache)).split()
  assert first[1] in jc.available_impls() and second == ["0", first[1]]


@pytest.mark.parametrize("transform", ["jit", "grad", "vmap", "jit_grad_vmap"])
def test_values_and_gradients_equal_lax_first_hit_under_any_transform(monkeypatch, cache, rng, transform):
  monkeypatch.setattr(tuned, "candidates", lambda g: FAST)
  x = jnp.asarray(rng.standard_normal((2, *X_SHAPE)), jnp.float32)
  w = jnp.asarray(rng.standard_normal(W_SHAPE), jnp.float32)

  def loss(impl):
    return lambda x, w: jnp.sum(jc.conv(x, w, padding="same", impl=impl) ** 2)

  make = {
    "jit": lambda impl: jax.jit(lambda x, w: jc.conv(x[0], w, padding="same", impl=impl)),
    "grad": lambda impl: lambda x, w: jax.grad(loss(impl), argnums=(0, 1))(x[0], w),
    "vmap": lambda impl: jax.vmap(lambda x: jc.conv(x, w, padding="same", impl=impl)),
    "jit_grad_vmap": lambda impl: jax.jit(jax.vmap(jax.grad(loss(impl), argnums=(0, 1)), in_axes=(0, None))),
  }[transform]
  args = (x,) if transform == "vmap" else (x, w)
  got, want = make("tuned")(*args), make("lax")(*args)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), got, want)
  assert len(json.loads((cache / "tuned.json").read_text())["choices"]) == 1


def test_a_damaged_cache_file_is_reported_and_rebuilt(monkeypatch, cache):
  monkeypatch.setattr(tuned, "candidates", lambda g: FAST)
  path = cache / "tuned.json"
  path.write_text('{"format": 1, "machines": {}, "choi')
  with pytest.warns(UserWarning, match=str(path)):
    choice = tuned.choose(geometry())
  assert choice in FAST
  data = json.loads(path.read_text())
  assert [e["impl"] for e in data["choices"].values()] == [choice]


@pytest.mark.parametrize(
  "content",
  [
    "[]",
    '{"format": 1, "machines": {}, "choices": {"k": {"impl": "lax", "candidates": ["im2col"]}}}',
    '{"format": 99, "machines": {}, "choices": {}}',
  ],
)
def test_a_well_formed_but_wrong_cache_is_not_trusted(monkeypatch, cache, content):
  monkeypatch.setattr(tuned, "candidates", lambda g: FAST)
  (cache / "tuned.json").write_text(content)
  with pytest.warns(UserWarning, match="damaged"):
    tuned.choose(geometry())
  assert len(tuned._read(str(cache / "tuned.json"))["choices"]) == 1


def test_a_stored_choice_among_other_kernels_is_measured_again(monkeypatch, cache):
  monkeypatch.setattr(tuned, "candidates", lambda g: FAST)
  tuned.choose(geometry())
  measured = len(tuned._measured)
  tuned._memory.clear()
  monkeypatch.setattr(tuned, "candidates", lambda g: [*FAST, "toeplitz"])
  tuned.choose(geometry())
  assert len(tuned._measured) == measured + 1


def test_concurrent_tuners_leave_a_valid_file_with_every_choice(tmp_path):
  code = """
  import sys, jax.numpy as jnp
  from jaxconv.geometry import conv_geometry
  from jaxconv.kernels import tuned
  tuned.candidates = lambda g: {FAST!r}
  for c in (int(sys.argv[1]), 5, int(sys.argv[1]) + 10):
    tuned.choose(conv_geometry((1, 8, 8, c), (3, 3, c, 2), jnp.float32))
  """.replace("{FAST!r}", repr(FAST))
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(code), str(c)],
      env=subprocess_env(tmp_path),
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for c in (1, 2)
  ]
  for proc in procs:
    finish(proc)
  data = json.loads((tmp_path / "tuned.json").read_text())
  assert tuned._validate(data) is None
  channels = sorted(int(key.split(" x=")[1].split("x")[3].split()[0]) for key in data["choices"])
  assert channels == [1, 2, 5, 11, 12]
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tuned-")]  # no temporary file left


@pytest.mark.slow  # 9 s on a 2-core AVX2 EPYC: times every registered kernel
def test_a_user_kernel_that_is_fastest_is_chosen(monkeypatch, cache):
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the registration is undone after
  registry.register("user_fastest")(kernels.get("lax").forward)
  # A fake clock: the user's kernel takes no time, every other one a second.
  monkeypatch.setattr(tuned, "_timer", lambda name, fn, args: 0.0 if name == "user_fastest" else 1.0)
  g = geometry()
  assert "user_fastest" in tuned.candidates(g)
  assert tuned.choose(g) == "user_fastest"
  x, w = jnp.ones(X_SHAPE), jnp.ones(W_SHAPE)
  jaxpr = str(jax.make_jaxpr(lambda x, w: jc.conv(x, w, padding="same", impl="tuned"))(x, w))
  assert "impl=user_fastest" in jaxpr


@pytest.mark.parametrize("rule_slow_at_first", [True, False])
def test_a_disagreement_with_the_static_rule_is_timed_again(monkeypatch, cache, rule_slow_at_first):
  g = geometry()
  rule = auto.choose(g)
  other = next(name for name in FAST if name != rule)
  monkeypatch.setattr(tuned, "candidates", lambda g: [rule, other])
  monkeypatch.setenv(tuned.REPEATS_ENV, "3")
  runs = {rule: 0, other: 0}

  # A fake clock: the rule's kernel takes 1 s in its first warm run and first round (or always 0.1 s),
  # and 0.1 s after; the other one always 0.5 s.
  def timer(name, fn, args):
    runs[name] += 1
    if name == other:
      return 0.5
    return 1.0 if rule_slow_at_first and runs[name] <= 1 + 3 else 0.1

  monkeypatch.setattr(tuned, "_timer", timer)
  assert tuned.choose(g) == rule
  second_look = 3 if rule_slow_at_first else 0
  assert runs == {rule: 1 + 3 + second_look, other: 1 + 3 + second_look}


def test_tuned_serves_layers_and_the_lax_drop_in(monkeypatch, cache, rng):
  from flax import nnx

  from jaxconv import nn

  monkeypatch.setattr(tuned, "candidates", lambda g: FAST)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
  layer = nn.Conv(3, 4, (3, 3), padding="same", impl="tuned", rngs=nnx.Rngs(0))
  reference = nn.Conv(3, 4, (3, 3), padding="same", impl="lax", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(layer(x), reference(x), rtol=1e-5, atol=1e-5)
  xn, wn = jnp.moveaxis(x, -1, 1), jnp.asarray(rng.standard_normal((4, 3, 3, 3)), jnp.float32)
  got = jc.conv_general_dilated(xn, wn, (1, 1), "SAME", impl="tuned")
  want = jax.lax.conv_general_dilated(xn, wn, (1, 1), "SAME")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_repeats_must_be_a_positive_int(monkeypatch, cache):
  monkeypatch.setattr(tuned, "candidates", lambda g: FAST)
  monkeypatch.setenv(tuned.REPEATS_ENV, "0")
  with pytest.raises(ValueError, match=tuned.REPEATS_ENV):
    tuned.choose(geometry())


def test_the_kernel_report_compares_tuned_with_the_fastest_kernel_and_the_gemm_peak():
  import benchmarks as bench

  rows = [
    {"shape": "s", "impl": "lax", "fb_ms": 4.0, "fb_speedup": 1.0, "fb_gflops": 10.0, "fb_peak_fraction": 0.1},
    {"shape": "s", "impl": "im2col", "fb_ms": 2.0, "fb_speedup": 2.0, "fb_gflops": 20.0, "fb_peak_fraction": 0.2},
    {"shape": "s", "impl": "tuned", "fb_ms": 2.5, "fb_speedup": 1.6, "fb_gflops": 16.0, "fb_peak_fraction": 0.16},
  ]
  for row in rows[1:]:
    row.update(err_y=0.0, err_dx=0.0, err_dw=0.0)
  summary = bench.summarize(rows, {}, {"s": "im2col"})
  entry = summary["per_shape"]["s"]
  assert entry["fastest"] == "im2col" and entry["tuned_choice"] == "im2col" and entry["tuned_vs_fastest"] == 1.25
  assert summary["shapes_where_tuned_is_over_1.15x_the_fastest"] == ["s"]
  env = bench.environment()
  assert {"date", "commit", "command", "cpu", "isa", "cpu_count", "load_average", "jax", "jaxlib", "onednn"} <= set(env)
  table = bench.markdown(rows, summary, env)
  assert "% of GEMM peak" in table and "| s | im2col | - | - | - | 2.00 | 20 | 20.0 |" in table
  assert "| s | 4.00 | - | - | - | im2col | 2.50 | 1.25 | im2col (2.00) |" in table
