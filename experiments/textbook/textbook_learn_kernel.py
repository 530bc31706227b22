"""Learning a kernel: recover the edge detector [1, -1] from (X, Y = X * [1, -1]) by gradient descent
under jit; then learn it with strict convolution instead, which finds the flipped kernel [-1, 1]
and gives the same outputs (a conv layer and a cross-correlation layer are equally expressive).

  python experiments/textbook/textbook_learn_kernel.py [--steps 30] [--learning_rate 0.03] \\
    [--outdir runs/textbook/learn_kernel]
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from textbook import EDGE_KERNEL, edge_image, learn_kernel
from textbook_common import define_outdir, plt, save

import jaxconv as jc

OUTDIR = define_outdir("learn_kernel")
STEPS = flags.DEFINE_integer("steps", 30, "Gradient-descent steps.")
LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-2, "Step size on the summed squared error.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the random initial kernel.")

LAYERS = {"cross-correlation": jc.correlate, "convolution": jc.convolve}


def main(argv: list[str]) -> None:
  """Learn the edge kernel with a correlation and a convolution layer; print and draw both descents."""
  del argv
  x = edge_image()
  y = np.asarray(jc.correlate(x, EDGE_KERNEL))
  fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
  learned = {}
  for (name, op), ax, style in zip(LAYERS.items(), axes[1:], ("-", "--")):
    kernels, losses = learn_kernel(
      x, y, EDGE_KERNEL.shape, op, steps=STEPS.value, learning_rate=LEARNING_RATE.value, seed=SEED.value
    )
    learned[name] = kernels[-1]
    print(f"{name} layer: loss per step")
    for i, loss in enumerate(losses):
      print(f"  step {i + 1:3d}: loss {loss:.5f}  kernel {np.round(kernels[i].ravel(), 4)}")
    print(f"  learned kernel {np.round(kernels[-1].ravel(), 4)} after {len(losses)} steps, final loss {losses[-1]:.2e}")
    axes[0].semilogy(np.arange(1, len(losses) + 1), losses, style, label=f"{name} layer")
    for tap in range(kernels.shape[-1]):
      ax.plot(kernels[:, 0, tap], label=f"k[{tap}] -> {kernels[-1, 0, tap]:+.3f}")
    for target in (1, -1):
      ax.axhline(target, color="gray", linewidth=0.8, linestyle=":")
    ax.set(
      xlabel="step",
      ylabel="kernel tap",
      ylim=(-2.2, 2.2),
      title=f"{name} layer learns [{', '.join(f'{v:+.2f}' for v in kernels[-1].ravel())}]",
    )
    ax.legend()
  gap = np.abs(
    np.asarray(jc.correlate(x, learned["cross-correlation"])) - np.asarray(jc.convolve(x, learned["convolution"]))
  ).max()
  print(f"max |correlation layer output - convolution layer output| = {gap:.2e}")
  axes[0].set(xlabel="step", ylabel="summed squared error", title="loss (the two curves coincide)")
  axes[0].legend()
  fig.suptitle(
    "Learning the edge kernel [1, -1] from X and Y: the convolution layer learns it flipped; "
    f"the two layers' outputs differ by {gap:.1e}"
  )
  save(fig, OUTDIR.value, "learn_kernel")


if __name__ == "__main__":
  app.run(main)
