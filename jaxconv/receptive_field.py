"""Receptive fields: walk a stack of conv/pool layers and track, per layer, which input pixels an
output unit sees.

For a layer with kernel ``k``, dilation ``d`` (``k_eff = d (k - 1) + 1``), stride ``s`` and low-side
padding ``pad_lo``, the standard recurrences from the input (``r = 1, j = 1, start = 0``) are::

    j_out     = j_in * s                                  # input pixels between adjacent units
    r_out     = r_in + (k_eff - 1) * j_in                 # receptive field size
    start_out = start_in + ((k_eff - 1) / 2 - pad_lo) * j_in   # centre of the first unit's field

per spatial axis, in input-pixel coordinates (pixel centres at 0, 1, ...). Layers without a
window (activations, normalisations) leave all three unchanged.

A unit's field clipped to the input is the bounding box of the input pixels it depends on when
the field lies inside the input, or when only the first layer pads (LeNet). Otherwise, near the
border it is an upper bound: a tap that falls into a later layer's zero padding reads no input,
though the input pixels its position maps to exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.geometry import Pair, Padding, normalize_ints, resolve_window


@dataclasses.dataclass(frozen=True)
class Window:
  """A sliding-window layer's geometry (a conv or a pool): a plain spec for :func:`walk`."""

  kernel: int | Sequence[int]
  stride: int | Sequence[int] = 1
  padding: Padding = "valid"
  dilation: int | Sequence[int] = 1
  name: str = "window"


@dataclasses.dataclass(frozen=True)
class Field:
  """One layer's output: spatial shape and, per axis, receptive field size, jump and start."""

  name: str
  shape: tuple[int, ...]
  size: tuple[int, ...]
  jump: tuple[int, ...]
  start: tuple[float, ...]

  def span(self, index: Sequence[int]) -> tuple[Pair, ...]:
    """``(first, last)`` input pixel per axis seen by the unit at ``index``; may reach into the padding."""
    if len(index) != len(self.shape) or not all(0 <= i < n for i, n in zip(index, self.shape)):
      raise ValueError(f"index must address a unit of the output shape {self.shape}; got {tuple(index)}")
    centres = (st + i * j for st, i, j in zip(self.start, index, self.jump))
    # Exact: for an even size the centre is a half-integer, so both ends are integers.
    return tuple((round(c - (r - 1) / 2), round(c + (r - 1) / 2)) for c, r in zip(centres, self.size))


def layer_name(layer: Any) -> str:
  """A short name for a layer: a Window's name, a module's class name or a function's name.

  A plain string stands for a layer without a window (e.g. ``"relu"``) in a list of specs.
  """
  if isinstance(layer, str):
    return layer
  if isinstance(layer, Window):
    return layer.name
  return getattr(layer, "__name__", type(layer).__name__)


def window_of(layer: Any) -> Window | None:
  """The window geometry of a conv (``kernel_size``) or pooling (``window``) layer; None for other layers."""
  if isinstance(layer, Window):
    return layer
  name = layer_name(layer)
  if hasattr(layer, "kernel_size"):
    return Window(layer.kernel_size, layer.stride, layer.padding, layer.dilation, name)
  if hasattr(layer, "window"):
    # Pooling strides default to the window, as in jc.max_pool / jc.avg_pool.
    stride = layer.window if layer.stride is None else layer.stride
    return Window(layer.window, stride, layer.padding, 1, name)
  return None


def layers_of(stack: Any) -> list:
  """The layers of a model (its ``features``), an ``nnx.Sequential`` (its ``layers``) or a sequence."""
  stack = getattr(stack, "features", stack)
  return list(getattr(stack, "layers", stack))


def describe(name: str, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[Pair], dilations: Sequence[int]) -> str:
  """A window layer's name with its geometry, e.g. ``"Conv 5x5 pad 2"``; unit strides and zero pads omitted."""
  text = f"{name} {'x'.join(map(str, kernel))}"
  if any(s > 1 for s in strides):
    text += f" stride {'x'.join(map(str, strides))}"
  if any(d > 1 for d in dilations):
    text += f" dilation {'x'.join(map(str, dilations))}"
  if any(p for pair in pads for p in pair):
    symmetric = all(lo == hi for lo, hi in pads) and len(set(pads)) == 1
    text += f" pad {pads[0][0]}" if symmetric else f" pad {tuple(pads)}"
  return text


def step(field: Field, layer: Any) -> Field:
  """The field after one more layer, by the recurrences of the module docstring."""
  window = window_of(layer)
  if window is None:
    return dataclasses.replace(field, name=layer_name(layer))
  g = resolve_window(field.shape, window.kernel, window.padding, window.stride, window.dilation, kernel_name=window.name)
  extents = g.kernel_extent
  return Field(
      name=describe(window.name, g.kernel, g.stride, g.padding, g.dilation),
      shape=g.out_spatial,
      size=tuple(r + (e - 1) * j for r, e, j in zip(field.size, extents, field.jump)),
      jump=tuple(j * s for j, s in zip(field.jump, g.stride)),
      start=tuple(st + ((e - 1) / 2 - lo) * j for st, e, (lo, _), j in zip(field.start, extents, g.padding, field.jump)),
  )


def walk(stack: Any, spatial: Sequence[int]) -> list[Field]:
  """Per layer of ``stack`` (see :func:`layers_of`) on an input of shape ``spatial``: its output :class:`Field`."""
  spatial = normalize_ints(tuple(spatial), len(spatial), "spatial")
  field = Field("input", spatial, (1,) * len(spatial), (1,) * len(spatial), (0.0,) * len(spatial))
  fields = []
  for layer in layers_of(stack):
    field = step(field, layer)
    fields.append(field)
  return fields


def format_table(fields: Iterable[Field]) -> str:
  """The walk as a Markdown table: layer, output shape, receptive field, jump, start."""

  def cell(values: Sequence) -> str:
    """Per-axis values as ``a x b``."""
    return " x ".join(f"{v:g}" for v in values)

  lines = ["| # | layer | output | receptive field | jump | start |", "|---|---|---|---|---|---|"]
  for i, f in enumerate(fields):
    lines.append(f"| {i} | {f.name} | {cell(f.shape)} | {cell(f.size)} | {cell(f.jump)} | {cell(f.start)} |")
  return "\n".join(lines)


def clip_span(span: Sequence[Pair], spatial: Sequence[int]) -> tuple[Pair, ...]:
  """A span clipped to the input ``spatial`` shape: the pixels that exist."""
  return tuple((max(lo, 0), min(hi, n - 1)) for (lo, hi), n in zip(span, spatial))


def input_gradients(fn: Callable[[jax.Array], jax.Array], x: jax.Array, indices: Sequence[Sequence[int]]) -> np.ndarray:
  """``|d y[0, *index, :].sum() / dx|`` summed over channels, per index: x ``(1, *spatial, C)`` -> ``(len(indices), *spatial)``."""
  y, pullback = jax.vjp(fn, x)
  # One forward pass; the pullback is vmapped over one one-hot cotangent per output unit.
  cotangents = np.zeros((len(indices), *y.shape), y.dtype)
  for row, index in enumerate(indices):
    cotangents[(row, 0, *index)] = 1.0
  (grads,) = jax.vmap(pullback)(jnp.asarray(cotangents))
  return np.abs(np.asarray(grads[:, 0])).sum(-1)


def support_span(grad: np.ndarray) -> tuple[Pair, ...]:
  """``(first, last)`` index per axis of the non-zero cells of ``grad``: the bounding box of its support."""
  nonzero = np.nonzero(grad)
  if not nonzero[0].size:
    raise ValueError("grad is zero everywhere: the output unit depends on no input cell")
  return tuple((int(a.min()), int(a.max())) for a in nonzero)


__all__ = [
    "Field",
    "Window",
    "clip_span",
    "format_table",
    "input_gradients",
    "layers_of",
    "support_span",
    "walk",
    "window_of",
]
