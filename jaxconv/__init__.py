"""jaxconv: convolution and cross-correlation kernels in JAX, the layers and LeNets built on them."""

from jaxconv.lax_compat import conv_general_dilated
from jaxconv.ops import available_impls, avg_pool, conv, conv_transpose, convolve, correlate, max_pool
from jaxconv.padding import output_shape

__version__ = "0.1.0"

__all__ = [
    "available_impls",
    "avg_pool",
    "conv",
    "conv_general_dilated",
    "conv_transpose",
    "convolve",
    "correlate",
    "max_pool",
    "output_shape",
]
