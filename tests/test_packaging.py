"""The install requirements per platform: oneDNN is required on Linux x86_64 only, everything else everywhere.

PyPI has ``onednn-cpu-gomp`` (runtime) and ``onednn-devel-cpu-gomp`` (headers, a build requirement) for
Linux x86_64 alone, so both carry an environment marker; without it ``pip install jaxconv`` fails on a
Mac, on Linux aarch64 and on Windows. The markers are evaluated with ``packaging.markers`` for each
platform, as pip evaluates them: on the build requirements and dependencies of pyproject.toml, and on
the ``Requires-Dist`` lines of the metadata the build backend writes (what a wheel ships).
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
ONEDNN = {"onednn-cpu-gomp", "onednn-devel-cpu-gomp"}


# The marker variables pip fills in on each platform (those the markers could test).
def _platform(sys_platform: str, machine: str, system: str, os_name: str) -> dict[str, str]:
  return {"sys_platform": sys_platform, "platform_machine": machine, "platform_system": system, "os_name": os_name}


PLATFORMS = {
  "linux-x86_64": _platform("linux", "x86_64", "Linux", "posix"),
  "linux-aarch64": _platform("linux", "aarch64", "Linux", "posix"),
  "macos-arm64": _platform("darwin", "arm64", "Darwin", "posix"),
  "windows-amd64": _platform("win32", "AMD64", "Windows", "nt"),
}


def _environment(platform: str) -> dict[str, str]:
  """The full marker environment of ``platform`` with this interpreter's Python version."""
  return {
    "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
    "python_full_version": ".".join(map(str, sys.version_info[:3])),
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    **PLATFORMS[platform],
  }


def required_on(requirements: list[str], platform: str, extras: tuple[str, ...] = ("",)) -> set[str]:
  """The distribution names of ``requirements`` whose markers hold on ``platform`` (for any of ``extras``)."""
  names = set()
  for text in requirements:
    req = Requirement(text)
    if req.marker is None or any(req.marker.evaluate({**_environment(platform), "extra": e}) for e in extras):
      names.add(req.name.lower())
  return names


def pyproject() -> dict:
  """pyproject.toml, parsed."""
  return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_build_requirements_need_onednn_headers_on_linux_x86_64_only(platform):
  """The oneDNN headers are a build requirement on Linux x86_64 alone; setuptools and jaxlib everywhere."""
  names = required_on(pyproject()["build-system"]["requires"], platform)
  assert {"setuptools", "jaxlib"} <= names
  assert ("onednn-devel-cpu-gomp" in names) == (platform == "linux-x86_64"), (platform, sorted(names))


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_dependencies_need_onednn_on_linux_x86_64_only(platform):
  """The oneDNN runtime is a dependency on Linux x86_64 alone; jax, flax, optax and the rest everywhere."""
  names = required_on(pyproject()["project"]["dependencies"], platform)
  assert {"jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint"} <= names
  assert ("onednn-cpu-gomp" in names) == (platform == "linux-x86_64"), (platform, sorted(names))
  extras = pyproject()["project"]["optional-dependencies"]
  for extra, requirements in extras.items():
    assert not required_on(requirements, platform) & ONEDNN, f"extra {extra!r} pulls in oneDNN on {platform}"


def _built_metadata(tmp: Path) -> Path:
  """The wheel's METADATA: from the wheel at ``$JAXCONV_WHEEL`` (.ci/run's), else as the build backend writes it."""
  wheel = os.environ.get("JAXCONV_WHEEL")
  if wheel:
    with zipfile.ZipFile(wheel) as zf:
      name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
      (tmp / "METADATA").write_bytes(zf.read(name))
    return tmp / "METADATA"
  try:
    setuptools_version = Version(importlib.metadata.version("setuptools"))
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("setuptools is not installed (the build backend)")
  floor = next(Requirement(r) for r in pyproject()["build-system"]["requires"] if r.startswith("setuptools"))
  if setuptools_version not in floor.specifier:
    pytest.skip(f"setuptools {setuptools_version} is installed; the build needs {floor} (the dev extra has it)")
  # A copy of the sources, so the backend's egg-info lands outside the checkout. No network, no compiler:
  # writing the metadata runs no build_ext.
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
    shutil.copy(ROOT / name, src / name)
  for name in ("jaxconv", "csrc"):
    (src / name).symlink_to(ROOT / name, target_is_directory=True)
  out = tmp / "meta"
  out.mkdir()
  code = "import sys; from setuptools import build_meta as b; print(b.prepare_metadata_for_build_wheel(sys.argv[1]))"
  done = subprocess.run(
    [sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True, timeout=300, check=False
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return out / done.stdout.strip().splitlines()[-1] / "METADATA"


@pytest.fixture(scope="session")
def wheel_requires(tmp_path_factory) -> list[str]:
  """The ``Requires-Dist`` lines of the wheel's metadata."""
  metadata = email.parser.Parser().parsestr(_built_metadata(tmp_path_factory.mktemp("wheel")).read_text())
  assert metadata["Name"] == "jaxconv"
  return metadata.get_all("Requires-Dist") or []


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_wheel_requires_onednn_on_linux_x86_64_only(platform, wheel_requires):
  """What pip installs from the wheel, per platform: oneDNN on Linux x86_64 only, with or without the extras."""
  base = required_on(wheel_requires, platform)
  with_extras = required_on(wheel_requires, platform, extras=("", "dev", "tfds", "plots"))
  assert {"jax", "jaxlib", "flax", "optax", "numpy"} <= base
  assert {"pytest", "tensorflow-datasets", "matplotlib"} <= with_extras
  want = platform == "linux-x86_64"
  assert ("onednn-cpu-gomp" in base) == want, (platform, sorted(base))
  assert ("onednn-cpu-gomp" in with_extras) == want
  assert "onednn-devel-cpu-gomp" not in with_extras  # headers are for the build only
