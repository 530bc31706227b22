"""What this CPU can do, detected at run time: its model name and the vector ISA extensions the kernels care about.

Read from ``/proc/cpuinfo`` (Linux, x86 and Arm); elsewhere the model falls back to ``platform`` and the
flags are empty, so that rules depending on them take their conservative branch.
"""

from __future__ import annotations

import functools
import platform

import numpy as np

# ISA extensions that decide which kernels are fast (x86 and Arm names as /proc/cpuinfo spells them).
ISA_FLAGS = (
  "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq",
  "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
  "asimd", "asimddp", "bf16", "i8mm", "sve", "sve2", "sme",
)  # fmt: skip
# The ISA flags (any one of them) with which an x86 CPU computes a 16-bit float dtype natively.
NATIVE_16BIT = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


@functools.cache
def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
  fields: dict[str, str] = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          if fields:
            break
          continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return fields


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``, else the architecture)."""
  info = _cpuinfo()
  return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def isa_flags() -> tuple[str, ...]:
  """The vector ISA extensions of this CPU that matter to the kernels (from ``ISA_FLAGS``), detected now."""
  info = _cpuinfo()
  present = set((info.get("flags") or info.get("Features") or "").split())
  return tuple(flag for flag in ISA_FLAGS if flag in present)


def native_dtype(dtype: object) -> bool:
  """Whether this CPU has instructions for the float ``dtype``: a ``NATIVE_16BIT`` flag for 16-bit ones, always else."""
  needs = NATIVE_16BIT.get(np.dtype(dtype).name)  # type: ignore[call-overload]  # any dtype-like
  return needs is None or any(flag in isa_flags() for flag in needs)


__all__ = ["ISA_FLAGS", "NATIVE_16BIT", "cpu_model", "isa_flags", "native_dtype"]
