"""Implementations of one convolution contract (see ``registry``), selectable by name.

Importing this package registers every kernel module listed below; ``primitives`` gives each of
them every JAX transform.
"""

from jaxconv.kernels import lax, patches  # noqa: F401  (registration side effects)

# Registration order is the order of available(); auto goes last, it dispatches to the others.
from jaxconv.kernels import im2col, hybrid, depthwise, fft, winograd, toeplitz, onednn, auto  # noqa: F401,I001
from jaxconv.kernels.primitives import conv, conv_input_grad, conv_kernel_grad
from jaxconv.kernels.registry import Kernel, accumulation_dtype, available, get, register, resolve

__all__ = ["Kernel", "accumulation_dtype", "available", "conv", "conv_input_grad", "conv_kernel_grad", "get", "register", "resolve"]
