"""Receptive-field walk against hand-computed LeNet values and brute force: the non-zero support of
the gradient of one output unit w.r.t. the input (positive weights, no dead zones, so it is exact).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxconv as jc
from jaxconv import nn
from jaxconv import receptive_field as rf
from jaxconv._checks import normalize_ints
from jaxconv.models import LeNet

W = rf.LayerWindow

LENET = [
  W(5, padding=2, name="conv1"),
  "sigmoid",
  W(2, 2, name="pool1"),
  W(5, name="conv2"),
  "sigmoid",
  W(2, 2, name="pool2"),
]

# name: (layers, input shape, whether only the first layer pads, so the field is exact at the border too)
STACKS = {
  "strided": ([W(3, 2, padding=1), W(3, 2), W(2, 2)], (23, 19), True),
  "dilated": ([W(3, dilation=2), W(3, dilation=3), W(2, 1)], (20, 21), True),
  "padded": (
    [W(4, padding="same"), W(3, 2, padding="same"), W((2, 3), (1, 2), padding=((2, 0), (1, 3)))],
    (13, 12),
    False,
  ),
  "mixed": (
    [W(5, 2, padding=2), W(3, dilation=2, padding="same"), W(1, 3), W(3, 2, padding=1, dilation=2)],
    (47, 44),
    False,
  ),
  # ceil_mode windows overhang the input like padding; an evenly dividing adaptive pool is a window.
  "ceil-dilated-adaptive": (
    [W(3, 2, ceil_mode=True), rf.Adaptive((None, 6)), W(3, dilation=2, padding=1), W(2, 1)],
    (24, 25),
    False,
  ),
}


def ones_net(stack: list) -> Callable[[jax.Array], jax.Array]:
  """The stack as positive single-channel convs (all-ones kernels): a linear map with exact support."""

  def apply(x: jax.Array) -> jax.Array:
    for layer in stack:
      if isinstance(layer, rf.Adaptive):
        x = jc.adaptive_avg_pool(x, layer.output_size)  # positive weights on each cell
        continue
      window = rf.window_of(layer)
      if window is not None and window.ceil_mode:  # the overhanging last window reads fewer cells
        x = jc.avg_pool(x, window.kernel, window.stride, window.padding, ceil_mode=True)
      elif window is not None:
        kernel = normalize_ints(window.kernel, x.ndim - 2, "kernel")
        x = jc.conv(
          x, jnp.ones((*kernel, 1, 1)), stride=window.stride, padding=window.padding, dilation=window.dilation
        )
    return x

  return apply


def probe_indices(field: rf.Field, spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
  """Output units to probe: the corners, the middle and the first unit whose field lies inside the input."""
  shape = field.shape
  inside = [i for i in np.ndindex(*shape) if rf.clip_span(field.span(i), spatial) == field.span(i)]
  return sorted(
    {(0,) * len(shape), tuple(n - 1 for n in shape), tuple(n // 2 for n in shape), (0, shape[1] - 1), *inside[:1]}
  )


def assert_support_matches(
  fn, fields: list[rf.Field], spatial: tuple[int, ...], x: jax.Array, *, exact_at_border: bool
) -> None:
  """For the last field: shape as run, and each probed unit's gradient support as predicted.

  A unit whose field lies inside the input depends on exactly that field. At the border the
  field clipped to the input is exact when only the first layer pads (``exact_at_border``);
  otherwise it is an upper bound, since taps that fall into a later layer's zero padding read
  no input.
  """
  field = fields[-1]
  assert jax.eval_shape(fn, x).shape[1:-1] == field.shape
  interior = 0
  indices = probe_indices(field, spatial)
  for index, grad in zip(indices, rf.input_gradients(fn, x, indices)):
    span = field.span(index)
    predicted = rf.clip_span(span, spatial)
    if not grad.any():  # a unit that sees only padding
      assert not exact_at_border and span != predicted, f"{field.name} unit {index}"
      continue
    support = rf.support_span(grad)
    if span == predicted or exact_at_border:
      interior += span == predicted
      assert support == predicted, f"{field.name} unit {index}"
    else:
      assert all(p_lo <= lo <= hi <= p_hi for (lo, hi), (p_lo, p_hi) in zip(support, predicted)), (
        f"{field.name} unit {index}"
      )
  assert interior or exact_at_border, f"{field.name}: no probed unit lies inside the input"


def test_lenet_by_hand():
  fields = rf.walk(LENET, (28, 28))
  assert [f.shape[0] for f in fields] == [28, 28, 14, 10, 10, 5]
  assert [f.size[0] for f in fields] == [5, 5, 6, 14, 14, 16]
  assert [f.jump[0] for f in fields] == [1, 1, 2, 2, 2, 4]
  assert [f.start[0] for f in fields] == [0.0, 0.0, 0.5, 4.5, 4.5, 5.5]
  assert fields[-1].span((0, 0)) == ((-2, 13), (-2, 13))


@pytest.mark.parametrize("name", sorted(STACKS))
def test_stack_matches_gradient_support(name):
  stack, spatial, exact = STACKS[name]
  fields = rf.walk(stack, spatial)
  for k in range(len(stack)):
    assert_support_matches(
      ones_net(stack[: k + 1]), fields[: k + 1], spatial, jnp.ones((1, *spatial, 1)), exact_at_border=exact or k == 0
    )


def positive_lenet(variant: str) -> LeNet:
  """LeNet with small positive weights, so sigmoids stay unsaturated and no unit's gradient vanishes."""
  model = LeNet(variant=variant, rngs=nnx.Rngs(0))
  # In numpy: eager jnp ops would compile once per parameter shape.
  nnx.update(model, jax.tree.map(lambda p: jnp.asarray(0.1 * np.abs(np.asarray(p))), nnx.state(model, nnx.Param)))
  return model


def test_lenet_model_matches_gradient_support():
  model = positive_lenet("classic")
  layers = rf.layers_of(model)
  fields = rf.walk(model, (28, 28))
  assert len(fields) == len(layers) == 6
  x = jnp.full((1, 28, 28, 1), 0.5)
  for k in range(len(layers)):
    assert_support_matches(nnx.Sequential(*layers[: k + 1]), fields[: k + 1], (28, 28), x, exact_at_border=True)
  # Max pooling sends gradients to one cell per window, but the field's geometry is the same.
  assert [f.size for f in rf.walk(LeNet(variant="modern", rngs=nnx.Rngs(0)), (28, 28))] == [f.size for f in fields]


def test_modules_read_like_windows():
  conv = nn.Conv(1, 2, (3, 3), stride=2, padding="same", dilation=2, rngs=nnx.Rngs(0))
  modules = [conv, nnx.relu, nn.MaxPool(2), nn.AvgPool(3, 1, padding=1)]
  plain = [W(3, 2, "same", 2), "relu", W(2, 2), W(3, 1, 1)]
  strip = lambda fields: [(f.shape, f.size, f.jump, f.start) for f in fields]
  assert strip(rf.walk(modules, (17, 16))) == strip(rf.walk(plain, (17, 16)))
  assert [f.name for f in rf.walk(modules, (17, 16))][:2] == [
    "Conv 3x3 stride 2x2 dilation 2x2 pad ((2, 2), (1, 2))",
    "relu",
  ]


def test_table_lists_every_layer():
  table = rf.format_table(rf.walk(LENET, (28, 28)))
  assert table.count("\n") == 7 and "| 5 | pool2 2x2 stride 2x2 | 5 x 5 | 16 x 16 | 4 x 4 | 5.5 x 5.5 |" in table


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="conv2"):
    rf.walk([W(5, name="conv1"), W(5, name="conv2")], (8, 8))
  with pytest.raises(ValueError, match="index"):
    rf.walk(LENET, (28, 28))[-1].span((5, 0))
  with pytest.raises(ValueError, match="zero everywhere"):
    rf.support_span(np.zeros((3, 3)))


def test_ceil_mode_dilation_and_adaptive_by_hand():
  """ceil_mode keeps PyTorch's extra window; dilation widens the field; an even adaptive pool is a window."""
  ceil, floor = rf.walk([W(2, 2, ceil_mode=True)], (5,)), rf.walk([W(2, 2)], (5,))  # ceil(3 / 2) + 1 vs floor + 1
  assert (ceil[0].shape, floor[0].shape, ceil[0].size, ceil[0].jump) == ((3,), (2,), (2,), (2,))
  assert ceil[0].name == "window 2 stride 2 ceil"
  fields = rf.walk(
    [nn.MaxPool(3, 2, dilation=2, ceil_mode=True), nn.AdaptiveAvgPool((2, None)), rf.Adaptive(1)], (11, 9)
  )
  assert [f.shape for f in fields] == [(4, 3), (2, 3), (1, 1)]  # ceil((11 - 5) / 2) + 1 = 4, ceil((9 - 5) / 2) + 1 = 3
  assert [f.size for f in fields] == [(5, 5), (7, 5), (11, 9)]  # r + (k_eff - 1) j
  assert [f.jump for f in fields] == [(2, 2), (4, 2), (8, 6)]
  assert fields[-1].span((0, 0)) == ((0, 10), (0, 8))


def test_walk_refuses_what_no_window_describes():
  """Uneven adaptive cells and transposed convs have no sliding-window field: a clear error naming the layer."""
  with pytest.raises(ValueError, match="^AdaptiveMaxPool: output_size"):
    rf.walk([nn.AdaptiveMaxPool(3)], (8, 8))
  with pytest.raises(ValueError, match="^ConvTranspose: a transposed convolution"):
    rf.walk([nn.ConvTranspose(1, 1, (3, 3), stride=2, output_padding=1, rngs=nnx.Rngs(0))], (8, 8))
  with pytest.raises(ValueError, match="^output_size"):
    rf.walk([rf.Adaptive(0)], (8, 8))
