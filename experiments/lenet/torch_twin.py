"""The modern LeNet-5 in PyTorch, for the benchmarks that race it: the same layers and, copied, the same weights.

torch is imported by the functions, not here: the program runs without it.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

__all__ = ["torch_lenet", "torch_params"]


def torch_lenet():
  """The modern LeNet-5 as a PyTorch ``nn.Sequential`` (NCHW)."""
  from torch import nn

  return nn.Sequential(
      nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
      nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
  )  # fmt: skip


def torch_params(params: nnx.State) -> dict[str, np.ndarray]:
  """jaxconv LeNet parameters as the ``state_dict`` of ``torch_lenet()``: the same initial weights."""
  plain = nnx.to_pure_dict(params)
  convs, denses = plain["features"]["layers"], plain["classifier"]["layers"]
  out = {}
  for name, layer in (("0", convs[0]), ("3", convs[3])):
    out[f"{name}.weight"] = np.asarray(layer["kernel"]).transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    out[f"{name}.bias"] = np.asarray(layer["bias"])
  first = np.asarray(denses[1]["kernel"])  # rows in NHWC flatten order (h, w, c); torch flattens (c, h, w)
  out["7.weight"] = first.reshape(5, 5, 16, -1).transpose(2, 0, 1, 3).reshape(400, -1).T
  out["7.bias"] = np.asarray(denses[1]["bias"])
  for name, layer in (("9", denses[3]), ("11", denses[5])):
    out[f"{name}.weight"], out[f"{name}.bias"] = np.asarray(layer["kernel"]).T, np.asarray(layer["bias"])
  return {k: np.array(v, np.float32, order="C") for k, v in out.items()}  # writable copies
