"""What a training step updates, as pytrees: the batch and the state of any NNX model with an Optax optimiser.

The model enters the compiled functions as ``nnx.split`` state (its ``nnx.Param`` leaves) and is
rebuilt by ``nnx.merge`` under the trace, so every step is a pure function of arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax
from flax import nnx

__all__ = ["Batch", "TrainState", "create_state"]


class Batch(NamedTuple):
  """Images ``(N, H, W, C)`` float32 and int32 labels ``(N,)``; a label < 0 marks padding (see ``loop.place``)."""

  images: jax.Array
  labels: jax.Array


class TrainState(NamedTuple):
  """Everything a step updates: the model's parameters and the optimiser state."""

  params: nnx.State
  opt_state: optax.OptState


def create_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  """``(graphdef, state)`` of ``model``: its structure, and its ``nnx.Param`` leaves with ``tx``'s fresh state.

  The model's forward pass must depend on nothing but its parameters and the images (no batch
  statistics or dropout keys: those would need state of their own).
  """
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, TrainState(params, tx.init(params))
