"""Builds jaxconv's one native part, the oneDNN convolution extension ``jaxconv/_onednn*.so``.

It is ``csrc/onednn_conv.cc`` (oneDNN's primitives) and ``csrc/direct_conv.cc`` (its own direct
loops for narrow input gradients and single-channel convolutions, built for AVX-512, and again from
``csrc/direct_conv_avx2.cc`` for AVX2 with FMA; the extension picks by the CPU at run time),
compiled with OpenMP: the direct loops share oneDNN's GNU OpenMP runtime (``libgomp``).

Everything else is in pyproject.toml. The extension is a plain shared library of XLA FFI handlers
(loaded with ctypes, no Python C API), compiled against XLA's FFI headers (from ``jaxlib``) and
oneDNN's headers (``onednn-devel-cpu-gomp``), both build requirements, and linked to
``libdnnl.so.3``, which ``jaxconv.kernels.onednn`` loads from the runtime dependency
``onednn-cpu-gomp`` before the extension (so no rpath into a build environment is needed).

The extension is optional: without a C++ compiler or the headers the install still succeeds,
with a warning, and ``supports_onednn`` then says that the extension is not built. PyPI has the
oneDNN packages for Linux x86_64 only (pyproject.toml's environment markers require them there
alone), so on any other platform the extension is skipped with a warning before anything is looked
for, unless ``$ONEDNN_ROOT`` points at a oneDNN of its own.
``$ONEDNN_ROOT`` (a prefix with ``include/`` and ``lib/``) overrides where oneDNN is looked for.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ONEDNN_DEVEL = "onednn-devel-cpu-gomp"
ONEDNN_RUNTIME = "onednn-cpu-gomp"


def _platform_has_onednn_wheels() -> bool:
  """Whether PyPI's oneDNN packages exist here (pyproject.toml's marker: Linux x86_64)."""
  return sys.platform == "linux" and platform.machine() == "x86_64"


def _installed_dir(distribution: str, suffix: str) -> str | None:
  """The directory holding ``suffix`` (a relative path, e.g. ``oneapi/dnnl/dnnl.hpp``) in ``distribution``'s files."""
  try:
    files = importlib.metadata.files(distribution) or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    path = Path(file.locate()).resolve()
    if path.as_posix().endswith("/" + suffix):
      return path.as_posix()[: -len(suffix) - 1]
  return None


def _ffi_include() -> str | None:
  """XLA's FFI headers, shipped inside jaxlib (what ``jax.ffi.include_dir()`` returns)."""
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or spec.origin is None:
    return None
  include = Path(spec.origin).parent / "include"
  return str(include) if (include / "xla" / "ffi" / "api" / "ffi.h").exists() else None


def _onednn_dirs() -> tuple[str | None, str | None]:
  """(include dir, lib dir) of oneDNN: ``$ONEDNN_ROOT`` or the installed wheels."""
  root = os.environ.get("ONEDNN_ROOT")
  if root:
    return str(Path(root) / "include"), str(Path(root) / "lib")
  return _installed_dir(ONEDNN_DEVEL, "oneapi/dnnl/dnnl.hpp"), _installed_dir(ONEDNN_RUNTIME, "libdnnl.so")


class BuildExtension(build_ext):
  """build_ext that finds the headers at build time (the build requirements exist only then)."""

  def build_extension(self, ext: Extension) -> None:
    if not _platform_has_onednn_wheels() and not os.environ.get("ONEDNN_ROOT"):
      self.warn(
        f"not building {ext.name}: PyPI's oneDNN packages ({ONEDNN_RUNTIME}, {ONEDNN_DEVEL}) exist for Linux x86_64 "
        f"only, and this is {sys.platform} {platform.machine()}; impl='onednn' will be unavailable (set $ONEDNN_ROOT "
        "to a oneDNN 3.x prefix to build it anyway)"
      )
      return
    ffi_include = _ffi_include()
    dnnl_include, dnnl_lib = _onednn_dirs()
    required = (
      ("XLA FFI headers (jaxlib)", ffi_include),
      (f"oneDNN headers ({ONEDNN_DEVEL})", dnnl_include),
      (f"libdnnl.so ({ONEDNN_RUNTIME})", dnnl_lib),
    )
    missing = [name for name, path in required if path is None]
    if missing:
      self.warn(f"not building {ext.name}: missing {', '.join(missing)}; impl='onednn' will be unavailable")
      return
    ext.include_dirs += [ffi_include, dnnl_include]
    ext.library_dirs += [dnnl_lib]
    super().build_extension(ext)


setup(
  ext_modules=[
    Extension(
      "jaxconv._onednn",
      sources=["csrc/onednn_conv.cc", "csrc/direct_conv.cc", "csrc/direct_conv_avx2.cc"],
      depends=["csrc/direct_conv.h", "csrc/direct_conv.cc"],
      language="c++",
      libraries=["dnnl", "dl"],
      extra_compile_args=["-std=c++17", "-O2", "-g0", "-fvisibility=hidden", "-fopenmp"],
      extra_link_args=["-fopenmp"],
      optional=True,
    )
  ],
  cmdclass={"build_ext": BuildExtension},
)
