"""Implementations of one convolution contract (see ``registry``), selectable by name.

Importing this package registers every kernel module listed below.
"""

from jaxconv.kernels import lax, patches  # noqa: F401  (registration side effects)
# Registration order is the order of available(); auto goes last, it dispatches to the others.
from jaxconv.kernels import im2col, hybrid, depthwise, fft, winograd, toeplitz, auto  # noqa: F401,I001
from jaxconv.kernels.registry import ConvSpec, Kernel, accumulation_dtype, available, get, register

__all__ = ["ConvSpec", "Kernel", "accumulation_dtype", "available", "get", "register"]
