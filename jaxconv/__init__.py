"""jaxconv: convolution and cross-correlation kernels in JAX, the layers and LeNets built on them."""

from jaxconv.geometry import output_shape
from jaxconv.lax_compat import conv_general_dilated
from jaxconv.ops import available_impls, conv, conv_transpose, convolve, correlate
from jaxconv.pooling import adaptive_avg_pool, adaptive_max_pool, avg_pool, max_pool

__version__ = "0.1.0"

__all__ = [
  "adaptive_avg_pool",
  "adaptive_max_pool",
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
