"""The named conv cases the kernels are compared on, and their random inputs.

A ``Shape`` is one case: x ``(N, *spatial, C_in)``, w ``(*kernel, C_in // groups, C_out)`` and the
stride, padding, dilation and groups of ``jc.conv``. ``SHAPES`` holds LeNet-5's two convolutions,
the five cases issue 4's targets are stated on (``TARGET_SHAPES``) and a few more.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.geometry import ConvGeometry, Padding, conv_geometry


def _conv_geometry(shape: Shape, dtype: Any) -> ConvGeometry:
  """The validated, resolved geometry of ``shape``'s conv: the one place the benchmarks resolve one."""
  return conv_geometry(shape.x, shape.w, dtype, **shape.geometry())


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmark case: x ``(N, *spatial, C_in)``, w ``(*kernel, C_in // groups, C_out)`` and geometry."""

  name: str
  x: tuple[int, ...]
  w: tuple[int, ...]
  stride: int | tuple[int, ...] = 1
  padding: Padding = "valid"
  dilation: int | tuple[int, ...] = 1
  groups: int = 1

  def spec(self, dtype: Any = jnp.float32) -> ConvGeometry:
    """The validated kernel-call description of this case."""
    return _conv_geometry(self, dtype)

  def geometry(self) -> dict[str, Any]:
    """The keyword arguments of ``jc.conv`` for this case."""
    return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

  def describe(self) -> str:
    """A short human-readable form, e.g. ``32x56x56x64 -> 64, 3x3 same``."""
    spec = self.spec()
    parts = ["x".join(map(str, self.x)), "->", f"{spec.out_channels},", "x".join(map(str, spec.kernel))]
    if isinstance(self.padding, str):
      parts.append(self.padding)
    elif any(p != (0, 0) for p in spec.padding):
      parts.append(f"pad {self.padding}")
    for label, value in (("stride", self.stride), ("dilation", self.dilation), ("groups", self.groups)):
      if value != 1:
        parts.append(f"{label} {value}")
    return " ".join(parts)


SHAPES: tuple[Shape, ...] = (
  # LeNet-5 (batch 128) and the five cases of issue 4.
  Shape("lenet_conv1", (128, 28, 28, 1), (5, 5, 1, 6), padding=2),
  Shape("lenet_conv2", (128, 14, 14, 6), (5, 5, 6, 16)),
  Shape("resnet_3x3", (32, 56, 56, 64), (3, 3, 64, 64), padding="same"),
  Shape("resnet_3x3_s2", (32, 56, 56, 64), (3, 3, 64, 128), stride=2, padding="same"),
  Shape("bottleneck_1x1", (32, 28, 28, 256), (1, 1, 256, 64)),
  Shape("depthwise_3x3", (32, 56, 56, 64), (3, 3, 1, 64), padding="same", groups=64),
  Shape("large_15x15", (8, 64, 64, 8), (15, 15, 8, 8), padding="same"),
  # A few more: other ranks, groups, dilation, a strided stem.
  Shape("conv1d_k5", (32, 1024, 64), (5, 64, 64), padding="same"),
  Shape("conv3d_3x3x3", (4, 16, 32, 32, 32), (3, 3, 3, 32, 32), padding="same"),
  Shape("grouped_3x3_g4", (32, 28, 28, 128), (3, 3, 32, 128), padding="same", groups=4),
  Shape("dilated_3x3_d2", (16, 32, 32, 64), (3, 3, 64, 64), padding="same", dilation=2),
  Shape("stem_7x7_s2", (16, 112, 112, 3), (7, 7, 3, 64), stride=2, padding="same"),
  # Where the banded (toeplitz) kernel stops paying: a small image with 32 output channels.
  Shape("cifar_5x5", (128, 32, 32, 3), (5, 5, 3, 32), padding="same"),
)
SHAPES_BY_NAME = {s.name: s for s in SHAPES}
# The shapes that issue 4's targets are stated on.
TARGET_SHAPES = (
  "lenet_conv1",
  "lenet_conv2",
  "resnet_3x3",
  "resnet_3x3_s2",
  "bottleneck_1x1",
  "depthwise_3x3",
  "large_15x15",
)


def select_shapes(names: Sequence[str] | None) -> list[Shape]:
  """The named shapes (all when ``names`` is empty); ``ValueError`` naming an unknown one."""
  if not names:
    return list(SHAPES)
  unknown = [n for n in names if n not in SHAPES_BY_NAME]
  if unknown:
    raise ValueError(f"shapes: unknown {unknown}; known: {list(SHAPES_BY_NAME)}")
  return [SHAPES_BY_NAME[n] for n in names]


def random_inputs(shape: Shape, dtype: Any = jnp.float32, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Standard-normal x, He-scaled w and a standard-normal output cotangent for ``shape``."""
  kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
  spec = shape.spec(dtype)
  fan_in = math.prod(spec.kernel) * spec.in_channels // spec.groups
  x = jax.random.normal(kx, shape.x, dtype)
  w = (jax.random.normal(kw, shape.w, jnp.float32) * math.sqrt(2.0 / fan_in)).astype(dtype)
  ct = jax.random.normal(kc, spec.out_shape, dtype)
  return x, w, ct


__all__ = ["SHAPES", "SHAPES_BY_NAME", "TARGET_SHAPES", "Shape", "random_inputs", "select_shapes"]
