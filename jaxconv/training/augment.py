"""On-device data augmentation: random shifts and small affine warps of image batches, pure and jit-able.

``augment(key, images, config)`` draws one transform per image and applies it with array ops only
(no Python per batch), so it runs inside the compiled train step. Two deterministic kernels do the
resampling and are public for tests and for matching other frameworks:

- ``shift(images, shifts, fill)``: integer translations, exact (pad, then ``lax.dynamic_slice``).
- ``affine(images, matrices, offsets, fill)``: bilinear resampling at ``c + A (p - c) + t``
  around the image centre ``c`` (``jax.scipy.ndimage.map_coordinates``, order 1).

Pixels that come from outside the image are the nearest edge pixel (``fill=None``, MNIST's
background whatever the normalisation) or the constant ``fill``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy import ndimage

__all__ = [
  "AugmentConfig",
  "affine",
  "augment",
  "config_fields",
  "from_config",
  "sample_affine",
  "sample_shifts",
  "shift",
]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Strengths of the random transforms; all zero (the default) leaves images unchanged.

  max_shift: integer translation drawn uniformly from ``[-max_shift, max_shift]`` pixels per axis.
  max_rotation: rotation angle uniform in ``[-max_rotation, max_rotation]`` degrees.
  max_scale: zoom factor uniform in ``[1 - max_scale, 1 + max_scale]`` (``0 <= max_scale < 1``).
  max_shear: shear angle uniform in ``[-max_shear, max_shear]`` degrees (``< 90``).
  fill: value of pixels from outside the image; None: the nearest edge pixel.
  """

  max_shift: int = 0
  max_rotation: float = 0.0
  max_scale: float = 0.0
  max_shear: float = 0.0
  fill: float | None = None

  def __post_init__(self):
    if not isinstance(self.max_shift, int) or isinstance(self.max_shift, bool) or self.max_shift < 0:
      raise ValueError(f"max_shift must be an int >= 0; got {self.max_shift!r}")
    for name, limit in (("max_rotation", 180.0), ("max_scale", 1.0), ("max_shear", 90.0)):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < limit:
        raise ValueError(f"{name} must be a number in [0, {limit:g}); got {value!r}")
    if self.fill is not None and (not isinstance(self.fill, (int, float)) or isinstance(self.fill, bool)):
      raise ValueError(f"fill must be None or a number; got {self.fill!r}")

  @property
  def warps(self) -> bool:
    """Whether a rotation, zoom or shear is drawn (else only shifts, which need no interpolation)."""
    return bool(self.max_rotation or self.max_scale or self.max_shear)

  @property
  def enabled(self) -> bool:
    """Whether ``augment`` changes anything."""
    return bool(self.max_shift) or self.warps


def config_fields(**values: Any) -> dict[str, Any]:
  """Every ``AugmentConfig`` field as a plain dict, the defaults (zeros, ``fill=None``) unless given.

  Raises:
    ValueError: an unknown field, or a value ``AugmentConfig`` refuses, named.
  """
  fields = {f.name: f.default for f in dataclasses.fields(AugmentConfig)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"unknown augment fields {unknown}; expected some of {sorted(fields)}")
  block = {**fields, **values}
  AugmentConfig(**block)  # the same errors as the dataclass, now rather than in the step
  return block


def from_config(block: Mapping[str, Any]) -> AugmentConfig:
  """The ``AugmentConfig`` of a mapping of its fields (a dict, or anything with ``to_dict()``, as a ``ConfigDict``)."""
  to_dict = getattr(block, "to_dict", None)
  return AugmentConfig(**(to_dict() if callable(to_dict) else dict(block)))


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C); got shape {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"images must have a floating dtype; got {images.dtype}")


def _check_per_image(name: str, value: jax.Array, shape: tuple[int, ...], images: jax.Array) -> None:
  if value.shape != (images.shape[0], *shape):
    raise ValueError(
      f"{name} must have shape {(images.shape[0], *shape)} for images of shape {images.shape}; got {value.shape}"
    )


def shift(images: jax.Array, shifts: jax.Array, fill: float | None = None, max_shift: int | None = None) -> jax.Array:
  """Translate each image by whole pixels: ``out[n, i, j] = images[n, i - dy, j - dx]``.

  images ``(N, H, W, C)``; shifts ``(N, 2)`` int ``(dy, dx)``, each ``|d|`` at most ``max_shift``
  (None: the image size). Pixels from outside the image are the nearest edge pixel
  (``fill=None``) or ``fill``.
  """
  _check_images(images)
  _check_per_image("shifts", shifts, (2,), images)
  if not jnp.issubdtype(shifts.dtype, jnp.integer):
    raise TypeError(f"shifts must have an integer dtype; got {shifts.dtype}")
  _, h, w, c = images.shape
  if max_shift is not None and (not isinstance(max_shift, int) or isinstance(max_shift, bool) or max_shift < 0):
    raise ValueError(f"max_shift must be None or an int >= 0; got {max_shift!r}")
  # Padding by the largest shift on each side makes every shift one slice (the default, a whole
  # image, serves any shift up to the image size; a smaller pad is less to write and gather).
  rh, rw = (h, w) if max_shift is None else (min(max_shift, h), min(max_shift, w))
  pad = ((0, 0), (rh, rh), (rw, rw), (0, 0))
  padded = jnp.pad(images, pad, mode="edge") if fill is None else jnp.pad(images, pad, constant_values=fill)
  shifts = shifts.astype(jnp.int32)

  def one(image: jax.Array, d: jax.Array) -> jax.Array:
    return lax.dynamic_slice(image, (rh - d[0], rw - d[1], 0), (h, w, c))

  return jax.vmap(one)(padded, shifts)


def affine(images: jax.Array, matrices: jax.Array, offsets: jax.Array, fill: float | None = None) -> jax.Array:
  """Bilinear resampling: ``out[n, p] = images[n, c + matrices[n] @ (p - c) + offsets[n]]``.

  images ``(N, H, W, C)``; matrices ``(N, 2, 2)`` and offsets ``(N, 2)`` act on (row, column)
  coordinates around the centre ``c = ((H - 1) / 2, (W - 1) / 2)``. This is
  ``scipy.ndimage.affine_transform`` with ``order=1`` (``mode="nearest"`` for ``fill=None``,
  ``"grid-constant"`` with ``cval=fill`` otherwise) with the origin moved to the centre.
  """
  _check_images(images)
  _check_per_image("matrices", matrices, (2, 2), images)
  _check_per_image("offsets", offsets, (2,), images)
  _, h, w, _ = images.shape
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2], images.dtype)
  grid = jnp.stack(
    jnp.meshgrid(jnp.arange(h, dtype=images.dtype), jnp.arange(w, dtype=images.dtype), indexing="ij"), -1
  )
  mode, cval = ("nearest", 0.0) if fill is None else ("constant", fill)

  def one(image: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    source = centre + (grid - centre) @ matrix.T.astype(images.dtype) + offset.astype(images.dtype)  # (H, W, 2)
    resample = lambda channel: ndimage.map_coordinates(
      channel, [source[..., 0], source[..., 1]], order=1, mode=mode, cval=cval
    )
    return jax.vmap(resample, in_axes=-1, out_axes=-1)(image)

  return jax.vmap(one)(images, matrices, offsets)


def sample_shifts(key: jax.Array, n: int, max_shift: int) -> jax.Array:
  """``(n, 2)`` int32 shifts ``(dy, dx)``, each uniform in ``[-max_shift, max_shift]``."""
  return jax.random.randint(key, (n, 2), -max_shift, max_shift + 1, jnp.int32)


def sample_affine(key: jax.Array, n: int, config: AugmentConfig) -> jax.Array:
  """``(n, 2, 2)`` sampling matrices (inverses of the random forward warps) of ``affine``.

  The forward warp of each image is ``scale * rotation @ shear`` (shear along rows); ``affine``
  samples through its inverse, so content is rotated by the drawn angle and zoomed by the drawn factor.
  """
  k_rot, k_scale, k_shear = jax.random.split(key, 3)
  uniform = lambda k, limit: jax.random.uniform(k, (n,), minval=-limit, maxval=limit)
  angle = uniform(k_rot, math.radians(config.max_rotation))
  scale = 1.0 + uniform(k_scale, config.max_scale)
  shear = jnp.tan(uniform(k_shear, math.radians(config.max_shear)))
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # inverse(scale * R @ S) = S^-1 @ R^T / scale with R = [[cos, -sin], [sin, cos]], S = [[1, 0], [shear, 1]].
  rows = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin - shear * cos, cos - shear * sin], -1)], -2)
  return rows / scale[:, None, None]


def augment(key: jax.Array, images: jax.Array, config: AugmentConfig) -> jax.Array:
  """A random transform of each image of ``images (N, H, W, C)``, of the same shape and dtype.

  Shifts only: exact integer translations (``shift``). With a rotation, zoom or shear: one
  bilinear ``affine`` per image through the warp, then the shift. All zero: ``images`` itself.
  """
  if not isinstance(config, AugmentConfig):
    raise TypeError(f"config must be an AugmentConfig; got {type(config).__name__}")
  _check_images(images)
  if not config.enabled:
    return images
  n = images.shape[0]
  k_shift, k_warp = jax.random.split(key)
  shifts = sample_shifts(k_shift, n, config.max_shift)
  if not config.warps:
    return shift(images, shifts, config.fill, config.max_shift)
  matrices = sample_affine(k_warp, n, config)
  # out[p] = warped[p - t]: the shift moves the output grid, so it enters after the matrix.
  offsets = -jnp.einsum("nij,nj->ni", matrices, shifts.astype(matrices.dtype))
  return affine(images, matrices, offsets.astype(images.dtype), config.fill)
