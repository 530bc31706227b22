"""Implementations of one convolution contract (see ``registry``), selectable by name.

Importing this package registers every kernel module listed below.
"""

from jaxconv.kernels import lax, patches  # noqa: F401  (registration side effects)
from jaxconv.kernels import auto, depthwise, fft, hybrid, im2col, winograd  # noqa: F401  (registration side effects)
from jaxconv.kernels.registry import ConvSpec, Kernel, accumulation_dtype, available, get, register

__all__ = ["ConvSpec", "Kernel", "accumulation_dtype", "available", "get", "register"]
