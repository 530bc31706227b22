"""Multiple input and output channels: a multi-input correlation is the sum over input channels of
single-channel correlations, each output channel has its own kernel, and a 1x1 convolution is a
dense layer applied at every pixel.

  python experiments/textbook/textbook_channels.py [--outdir runs/textbook/channels]
"""

from __future__ import annotations

import numpy as np
from absl import app
from textbook_common import define_outdir, heatmap, plt, save

import jaxconv as jc
from jaxconv import reference

OUTDIR = define_outdir("channels")

# The textbook's example, channels-last: x (3, 3, C_in=2), k (2, 2, C_in=2).
X = np.stack([np.arange(9.0).reshape(3, 3), np.arange(1.0, 10.0).reshape(3, 3)], axis=-1)
K = np.stack([np.arange(4.0).reshape(2, 2), np.arange(1.0, 5.0).reshape(2, 2)], axis=-1)


def conv_one(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """``jc.conv`` on one unbatched image: x ``(H, W, C_in)``, w ``(kh, kw, C_in, C_out)`` -> ``(H', W', C_out)``."""
  return np.asarray(jc.conv(x[None], w)[0])


def main(argv: list[str]) -> None:
  """Print the multi-channel and 1x1 checks and draw the two-channel example."""
  del argv
  partials = [reference.correlate2d(X[..., c], K[..., c]) for c in range(X.shape[-1])]
  y = conv_one(X, K[..., None])[..., 0]
  for c, partial in enumerate(partials):
    print(f"multi-input: input channel {c} correlated with kernel channel {c}:", partial.tolist())
  print("sum over the channels:", sum(partials).tolist(), " jc.conv:", y.tolist())

  k_out = np.stack([K, K + 1, K + 2], axis=-1)  # (2, 2, C_in=2, C_out=3): one kernel per output channel
  y_out = conv_one(X, k_out)
  loop = reference.correlate2d_channels(X, k_out)
  print(f"multi-output: jc.conv gives {y_out.shape}; max |jc.conv - loop| = {np.abs(y_out - loop).max():.1e}")
  for o in range(y_out.shape[-1]):
    print(f"  output channel {o}:", y_out[..., o].tolist())

  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(4, 5, 3)), rng.normal(size=(3, 2))
  by_conv = conv_one(x, w[None, None])
  by_dense = (x.reshape(-1, 3) @ w).reshape(4, 5, 2)
  print(
    "1x1 conv (4, 5, 3) -> (4, 5, 2) vs the dense layer x @ w at every pixel: "
    f"max difference {np.abs(by_conv - by_dense).max():.1e}"
  )

  fig, axes = plt.subplots(2, 4, figsize=(12, 6), layout="constrained")
  for c, row in enumerate(axes):
    heatmap(row[0], X[..., c], f"input channel {c}", cmap="Blues", vmax=12)
    heatmap(row[1], K[..., c], f"kernel channel {c}", cmap="Oranges", vmax=6)
    heatmap(row[2], partials[c], f"correlation of channel {c}", cmap="Purples", vmax=100)
  heatmap(axes[0, 3], y, "sum over channels\n= jc.conv output", cmap="Greens", vmax=150)
  axes[1, 3].axis("off")
  sums = "\n".join(f"{a:g} + {b:g} = {a + b:g}" for a, b in zip(partials[0].ravel(), partials[1].ravel()))
  axes[1, 3].text(0.5, 0.5, sums, ha="center", va="center", fontsize=12)
  fig.suptitle("Two input channels: correlate each channel with its own kernel slice, then add")
  save(fig, OUTDIR.value, "channels")


if __name__ == "__main__":
  app.run(main)
