"""The textbook chapter's worked examples as data and small computations, shared by the
``experiments/textbook/textbook_*.py`` scripts and their tests: the black-and-white edge image, classic
edge kernels, edge maps and how many of their detections survive a shift, every layer's output
of a feature stack, and learning a kernel from (input, output) pairs by gradient descent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.ops import correlate
from jaxconv.receptive_field import layers_of

# The vertical-edge detector: 1 where a white pixel has a black right neighbour, -1 at the reverse.
EDGE_KERNEL = np.array([[1.0, -1.0]])

# Sobel kernels (for correlation): SOBEL_X responds to left-to-right intensity drops
# (vertical edges), SOBEL_Y to top-to-bottom ones (horizontal edges).
SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
SOBEL_Y = SOBEL_X.T.copy()

SignalOp = Callable[[jax.Array, jax.Array], jax.Array]


def edge_image(height: int = 6, width: int = 8, dark: tuple[int, int] = (2, 6)) -> np.ndarray:
  """The black-and-white image ``(height, width)``: white (1) with the columns ``dark[0]:dark[1]`` black (0)."""
  if not 0 <= dark[0] < dark[1] <= width:
    raise ValueError(f"dark must be a column range (start, stop) inside width {width}; got {dark}")
  image = np.ones((height, width))
  image[:, dark[0] : dark[1]] = 0.0
  return image


def edge_maps(image: np.ndarray) -> np.ndarray:
  """Vertical edges of image ``(H, W)`` as two rectified channels ``(H, W - 1, 2)``: white-to-black, black-to-white."""
  y = np.asarray(correlate(image, EDGE_KERNEL))
  return np.stack([np.maximum(y, 0.0), np.maximum(-y, 0.0)], axis=-1)


def pool_image(pool_fn: Callable[..., jax.Array], x: np.ndarray, window, stride=None, padding="valid") -> np.ndarray:
  """``pool_fn`` (``jc.max_pool`` or ``jc.avg_pool``) on one unbatched image x ``(H, W)`` or ``(H, W, C)``."""
  x = np.asarray(x, np.float32)
  batched = x[None] if x.ndim == 3 else x[None, ..., None]
  y = np.asarray(pool_fn(batched, window, stride, padding))[0]
  return y if x.ndim == 3 else y[..., 0]


def retained(before: np.ndarray, after: np.ndarray) -> float:
  """Fraction of ``before``'s non-zero cells (detections) that are non-zero in ``after`` too."""
  fired = np.asarray(before) != 0
  if not fired.any():
    raise ValueError("before has no non-zero cell: nothing to retain")
  return float((fired & (np.asarray(after) != 0)).sum() / fired.sum())


def layer_outputs(stack: Any, x: jax.Array) -> list[jax.Array]:
  """Every layer's output for x ``(N, *spatial, C)``, through a model's ``features`` or a layer sequence."""
  outputs = []
  for layer in layers_of(stack):
    x = layer(x)
    outputs.append(x)
  return outputs


def learn_kernel(
  x: jax.Array,
  y: jax.Array,
  shape: tuple[int, ...],
  op: SignalOp,
  *,
  steps: int = 30,
  learning_rate: float = 3e-2,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Fit ``k`` of ``shape`` so that ``op(x, k) ~ y`` by gradient descent on the summed squared error.

  Starts from a standard-normal ``k``; the whole descent is one jitted ``lax.scan``.
  Returns the kernel before every step and after the last, ``(steps + 1, *shape)``, and the
  loss at every step, ``(steps,)``.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1; got {steps}")
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

  def loss(k: jax.Array) -> jax.Array:
    """The summed squared error of kernel ``k``."""
    return jnp.sum((op(x, k) - y) ** 2)

  def body(k: jax.Array, _) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One descent step: the next kernel, and this kernel with its loss."""
    value, grad = jax.value_and_grad(loss)(k)
    return k - learning_rate * grad, (k, value)

  @jax.jit
  def descend(k0: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """All steps from ``k0``: the final kernel, the kernel history and the losses."""
    k, (history, losses) = lax.scan(body, k0, length=steps)
    return k, history, losses

  k, history, losses = descend(jax.random.normal(jax.random.key(seed), shape))
  return np.concatenate([np.asarray(history), np.asarray(k)[None]]), np.asarray(losses)


__all__ = [
  "EDGE_KERNEL",
  "SOBEL_X",
  "SOBEL_Y",
  "edge_image",
  "edge_maps",
  "layer_outputs",
  "learn_kernel",
  "pool_image",
  "retained",
]
