"""What a training step updates, as pytrees: the batch and the state of any NNX model with an Optax optimiser.

The model enters the compiled functions as ``nnx.split`` state and is rebuilt by ``nnx.merge``
under the trace, so every step is a pure function of arrays. Its variables come in two parts: the
``nnx.Param`` leaves that the optimiser updates, and everything else (``rest``: BatchNorm's batch
statistics, the keys and counts of the model's ``nnx.Rngs`` streams, any variable type of a user's
layer), which the forward pass itself updates.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax
from flax import nnx

__all__ = ["Batch", "TrainState", "create_state", "model_variables"]


class Batch(NamedTuple):
  """Images ``(N, *spatial, C)`` and int32 labels ``(N,)``; a label < 0 marks padding (``loop.place_eval``)."""

  images: jax.Array
  labels: jax.Array


class TrainState(NamedTuple):
  """Everything a step updates: the parameters, the optimiser state and the model's other variables."""

  params: nnx.State
  opt_state: optax.OptState
  rest: nnx.State  # every non-Param variable: batch statistics, RNG keys and counts; empty for LeNet


def create_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  """``(graphdef, state)`` of ``model``: its structure, its variables and ``tx``'s fresh state of its parameters.

  Args:
    model: any ``nnx.Module``; its current mode (``model.train()`` / ``model.eval()``) is part of
      the returned graphdef.
    tx: the Optax optimiser; it sees the ``nnx.Param`` leaves only.

  Returns:
    ``(graphdef, TrainState(params, tx.init(params), rest))``.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]  # flax types it as variadic
  return graphdef, TrainState(params, tx.init(params), rest)


def model_variables(state: TrainState) -> nnx.State:
  """All of the model's variables, ``params`` and ``rest`` in one ``nnx.State`` (what ``nnx.merge`` takes)."""
  return nnx.merge_state(state.params, state.rest)
