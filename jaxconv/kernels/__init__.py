"""Implementations of one convolution contract (see ``registry``), selectable by name.

Importing this package registers every kernel module listed below; ``primitives`` gives each of
them every JAX transform.
"""

# Registration order is the order of available(); auto goes last, it dispatches to the others.
from jaxconv.kernels import auto, depthwise, fft, hybrid, im2col, lax, onednn, patches, toeplitz, tuned, winograd  # noqa: F401  (registration side effects)  # noqa: F401,I001
from jaxconv.kernels.primitives import conv, conv_input_grad, conv_kernel_grad
from jaxconv.kernels.registry import (
  DROP_IN_DEFAULT,
  FUNCTION_DEFAULT,
  LAYER_DEFAULT,
  Kernel,
  accumulation_dtype,
  available,
  check,
  get,
  layer_default,
  register,
  resolve,
)

__all__ = [
  "DROP_IN_DEFAULT",
  "FUNCTION_DEFAULT",
  "LAYER_DEFAULT",
  "Kernel",
  "accumulation_dtype",
  "available",
  "check",
  "conv",
  "conv_input_grad",
  "conv_kernel_grad",
  "get",
  "layer_default",
  "register",
  "resolve",
]
