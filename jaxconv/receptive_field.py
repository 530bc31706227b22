"""Receptive fields: walk a stack of conv/pool layers and track, per layer, which input pixels an
output unit sees.

For a layer with kernel ``k``, dilation ``d`` (``k_eff = d (k - 1) + 1``), stride ``s`` and low-side
padding ``pad_lo``, the standard recurrences from the input (``r = 1, j = 1, start = 0``) are::

    j_out     = j_in * s                                  # input pixels between adjacent units
    r_out     = r_in + (k_eff - 1) * j_in                 # receptive field size
    start_out = start_in + ((k_eff - 1) / 2 - pad_lo) * j_in   # centre of the first unit's field

per spatial axis, in input-pixel coordinates (pixel centres at 0, 1, ...). Layers without a
window (activations, normalisations) leave all three unchanged. A pool's ``ceil_mode`` and an
adaptive pool whose output size divides its input change only the output shape (an adaptive pool
is then a window of ``n // o`` at stride ``n // o``); pools' dilation enters ``k_eff`` as a conv's.

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
from flax import nnx

from jaxconv import pooling
from jaxconv._checks import normalize_ints
from jaxconv.geometry import Padding, Pair, resolve_window


@dataclasses.dataclass(frozen=True)
class LayerWindow:
  """A sliding-window layer's geometry (a conv or a pool): a plain spec for ``walk``."""

  kernel: int | Sequence[int]
  stride: int | Sequence[int] = 1
  padding: Padding = "valid"
  dilation: int | Sequence[int] = 1
  name: str = "window"
  ceil_mode: bool = False


@dataclasses.dataclass(frozen=True)
class Adaptive:
  """An adaptive pool (``output_size`` an int, or one int or None per axis): a plain spec for ``walk``.

  Its window depends on the input: on an axis of ``n`` inputs into ``o`` outputs it is a window
  of ``n // o`` at stride ``n // o`` when ``o`` divides ``n``; PyTorch's uneven cells (``o`` not
  dividing ``n``) have no single window, jump or start, so the walk refuses them.
  """

  output_size: int | Sequence[int | None]
  name: str = "adaptive pool"


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
  """A short name for a layer: a LayerWindow's name, a module's class name or a function's name.

  A plain string stands for a layer without a window (e.g. ``"relu"``) in a list of specs.
  """
  if isinstance(layer, str):
    return layer
  if isinstance(layer, (LayerWindow, Adaptive)):
    return layer.name
  return getattr(layer, "__name__", type(layer).__name__)


def adaptive_window(spatial: Sequence[int], output_size: int | Sequence[int | None], name: str) -> LayerWindow:
  """The window of an adaptive pool on an input of ``spatial`` shape: ``n // o`` per axis, where ``o`` divides ``n``."""
  out = pooling.adaptive_output_size(spatial, output_size)
  uneven = [(n, o) for n, o in zip(spatial, out) if n % o]
  if uneven:
    raise ValueError(
      f"{name}: output_size {out} does not divide the input {tuple(spatial)} ({uneven[0][0]} into {uneven[0][1]}): "
      "its cells have unequal sizes and spacing, so no receptive field recurrence describes them"
    )
  kernel = tuple(n // o for n, o in zip(spatial, out))
  return LayerWindow(kernel, kernel, "valid", 1, name)


def window_of(layer: Any, spatial: Sequence[int] | None = None) -> LayerWindow | None:
  """The window of a conv (``kernel_size``), pooling (``window``) or adaptive pooling (``output_size``) layer.

  Args:
    layer: a ``jaxconv.nn`` layer, a ``LayerWindow`` (returned as it is), or anything else.
    spatial: the input's spatial shape; needed for an adaptive pool only.

  Returns:
    The layer's ``LayerWindow``, or None for a layer without a window.

  Raises:
    ValueError: a transposed convolution (it spreads each input over a window of outputs, so the
      sliding-window recurrences do not describe it), or an adaptive pool without ``spatial``.
  """
  if isinstance(layer, LayerWindow):
    return layer
  name = layer_name(layer)
  if hasattr(layer, "output_padding"):
    raise ValueError(
      f"{name}: a transposed convolution has no sliding-window receptive field; "
      "jc.output_shape(..., transpose=True, output_padding=...) gives its output shape"
    )
  if hasattr(layer, "kernel_size"):
    return LayerWindow(layer.kernel_size, layer.stride, layer.padding, layer.dilation, name)
  if hasattr(layer, "window"):
    # Pooling strides default to the window, as in jc.max_pool / jc.avg_pool.
    stride = layer.window if layer.stride is None else layer.stride
    return LayerWindow(
      layer.window, stride, layer.padding, getattr(layer, "dilation", 1), name, getattr(layer, "ceil_mode", False)
    )
  if hasattr(layer, "output_size"):
    if spatial is None:
      raise ValueError(f"{name}: an adaptive pool's window depends on its input, so window_of needs spatial")
    return adaptive_window(spatial, layer.output_size, name)
  if isinstance(layer, nnx.Module) and any(
    sub is not layer and _has_window(sub) for _, sub in nnx.iter_modules(layer)
  ):  # fmt: skip
    # Passing it as a pointwise layer would give silently wrong fields.
    raise ValueError(
      f"{name}: a block of several layers (e.g. a residual block, whose two paths are added) has no single "
      "sliding window; walk follows plain stacks of conv/pool layers such as LeNet's features, not a ResNet"
    )
  return None


def _has_window(layer: Any) -> bool:
  """Whether ``layer`` is a conv, pool or adaptive pool (by the attributes :func:`window_of` reads)."""
  return any(hasattr(layer, attr) for attr in ("kernel_size", "window", "output_size"))


def layers_of(stack: Any) -> list:
  """The layers of a model (its ``features``), an ``nnx.Sequential`` (its ``layers``) or a sequence."""
  stack = getattr(stack, "features", stack)
  return list(getattr(stack, "layers", stack))


def describe(
  name: str,
  kernel: Sequence[int],
  strides: Sequence[int],
  pads: Sequence[Pair],
  dilations: Sequence[int],
  ceil_mode: bool = False,
) -> str:
  """A window layer's name and geometry, e.g. ``"Conv 5x5 pad 2"``; unit strides, zero pads, floor mode omitted."""
  text = f"{name} {'x'.join(map(str, kernel))}"
  if any(s > 1 for s in strides):
    text += f" stride {'x'.join(map(str, strides))}"
  if any(d > 1 for d in dilations):
    text += f" dilation {'x'.join(map(str, dilations))}"
  if any(p for pair in pads for p in pair):
    symmetric = all(lo == hi for lo, hi in pads) and len(set(pads)) == 1
    text += f" pad {pads[0][0]}" if symmetric else f" pad {tuple(pads)}"
  if ceil_mode:
    text += " ceil"
  return text


def step(field: Field, layer: Any) -> Field:
  """The field after one more layer, by the recurrences of the module docstring."""
  window = window_of(layer, field.shape)
  if window is None:
    return dataclasses.replace(field, name=layer_name(layer))
  g = resolve_window(
    field.shape,
    window.kernel,
    window.padding,
    window.stride,
    window.dilation,
    ceil_mode=window.ceil_mode,
    kernel_name=window.name,
  )
  extents = g.kernel_extent
  return Field(
    name=describe(window.name, g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode),
    shape=g.out_spatial,
    size=tuple(r + (e - 1) * j for r, e, j in zip(field.size, extents, field.jump)),
    jump=tuple(j * s for j, s in zip(field.jump, g.stride)),
    start=tuple(st + ((e - 1) / 2 - lo) * j for st, e, (lo, _), j in zip(field.start, extents, g.padding, field.jump)),
  )


def walk(stack: Any, spatial: Sequence[int]) -> list[Field]:
  """Walk a stack of layers from the input, by the recurrences of the module docstring.

  Args:
    stack: a model with ``features`` (``jaxconv.models.LeNet``), an ``nnx.Sequential``, or a
      sequence of layers: ``jaxconv.nn`` layers, ``LayerWindow`` / ``Adaptive`` specs,
      and anything without a window (an activation, a plain string such as ``"relu"``).
    spatial: the input's spatial shape, e.g. ``(28, 28)``.

  Returns:
    One ``Field`` per layer: its output shape and, per axis, receptive field size, jump and
    start (the centre of the first unit's field, in input pixels).

  Raises:
    ValueError: a bad ``spatial``, a layer that does not fit its input, a transposed convolution
      or an adaptive pool whose cells are uneven; the message names the layer.

  Example:
    >>> from jaxconv import receptive_field as rf
    >>> fields = rf.walk([rf.LayerWindow(3), rf.LayerWindow(2, stride=2), rf.LayerWindow(3)], (10,))
    >>> [(f.shape, f.size, f.jump) for f in fields]
    [((8,), (3,), (1,)), ((4,), (4,), (2,)), ((2,), (8,), (2,))]
  """
  spatial = normalize_ints(tuple(spatial), len(spatial), "spatial")
  field = Field("input", spatial, (1,) * len(spatial), (1,) * len(spatial), (0.0,) * len(spatial))
  fields = []
  for layer in layers_of(stack):
    field = step(field, layer)
    fields.append(field)
  return fields


def format_table(fields: Iterable[Field]) -> str:
  """The walk as a Markdown table: layer, output shape, receptive field, jump, start.

  Args:
    fields: what ``walk`` returns.

  Returns:
    The table, one row per field, axes joined by ``" x "``.
  """

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
  """``|d y[0, *index, :].sum() / dx|`` summed over channels, per index.

  x ``(1, *spatial, C)`` -> ``(len(indices), *spatial)``.
  """
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
  "Adaptive",
  "Field",
  "LayerWindow",
  "adaptive_window",
  "clip_span",
  "format_table",
  "input_gradients",
  "layers_of",
  "support_span",
  "walk",
  "window_of",
]
