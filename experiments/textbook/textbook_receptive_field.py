"""Receptive fields of LeNet: per layer, the output shape, receptive field size, jump and start
(the standard recurrences), and one output unit's field drawn over a digit next to the brute-force
answer, the gradient of that unit with respect to the input.

  python experiments/textbook/textbook_receptive_field.py [--variant classic] [--digit 0] \\
    [--outdir runs/textbook/receptive_field]
"""

from __future__ import annotations

import jax.numpy as jnp
import matplotlib.patches as mpatches
import numpy as np
from absl import app, flags
from flax import nnx
from textbook_common import define_outdir, plt, save

from jaxconv import receptive_field as rf
from jaxconv.data import MNIST_DIR, load_mnist
from jaxconv.models import VARIANTS, LeNet

OUTDIR = define_outdir("receptive_field")
VARIANT = flags.DEFINE_enum(
  "variant", "classic", VARIANTS, "LeNet variant (the geometry is the same; classic has dense gradients)."
)
DIGIT = flags.DEFINE_integer("digit", 0, "Index of the MNIST test image to draw on.")
DATA_DIR = flags.DEFINE_string("data_dir", str(MNIST_DIR), "Folder of the MNIST IDX files.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the (untrained) model whose gradients are shown.")


def box(ax, span, color: str, label: str = "", linestyle: str = "-") -> None:
  """Outline the input pixels ``span = ((top, bottom), (left, right))`` on ``ax``."""
  (top, bottom), (left, right) = span
  ax.add_patch(
    mpatches.Rectangle(
      (left - 0.5, top - 0.5),
      right - left + 1,
      bottom - top + 1,
      fill=False,
      edgecolor=color,
      linewidth=2,
      linestyle=linestyle,
      label=label,
    )
  )


def centre_unit(field: rf.Field, point: float) -> tuple[int, ...]:
  """The unit of ``field`` whose receptive field is centred nearest to ``point`` on every axis."""
  return tuple(int(np.clip(round((point - s) / j), 0, n - 1)) for s, j, n in zip(field.start, field.jump, field.shape))


def main(argv: list[str]) -> None:
  """Print LeNet's receptive-field table and draw fields next to brute-force gradients."""
  del argv
  model = LeNet(variant=VARIANT.value, rngs=nnx.Rngs(SEED.value))
  images, labels = load_mnist(DATA_DIR.value, "test")
  digit = images[DIGIT.value, ..., 0] / 255.0
  spatial = digit.shape
  fields = rf.walk(model, spatial)
  print(f"LeNet ({VARIANT.value}) features on a {spatial[0]}x{spatial[1]} input:")
  print(rf.format_table(fields))

  last = fields[-1]
  centre, corner = centre_unit(last, (spatial[0] - 1) / 2), (0, 0)
  grads = rf.input_gradients(model.features, jnp.asarray(digit)[None, ..., None], [centre, corner])
  for unit, grad in zip((centre, corner), grads):
    print(
      f"output unit {unit}: predicted field {last.span(unit)}, "
      f"clipped to the image {rf.clip_span(last.span(unit), spatial)}; gradient support {rf.support_span(grad)}"
    )

  fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), layout="constrained")
  axes[0].imshow(digit, cmap="gray")
  windows = [(i, f) for i, (f, layer) in enumerate(zip(fields, rf.layers_of(model))) if rf.window_of(layer) is not None]
  for (i, field), color in zip(windows, ("tab:cyan", "tab:green", "tab:orange", "tab:red")):
    unit = centre_unit(field, (spatial[0] - 1) / 2)
    box(
      axes[0], field.span(unit), color, f"layer {i}, {field.name}: unit {unit}, field {field.size[0]}x{field.size[1]}"
    )
  axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=9)
  axes[0].set_title(f"fields of the centre unit after each layer (digit {labels[DIGIT.value]})")
  # The corner unit's field reaches into conv1's zero padding: draw the gradients on the padded
  # canvas, padding in grey.
  pad = max(0, -min(lo for lo, _ in last.span(corner)))
  cmap = plt.get_cmap("magma").with_extremes(bad="lightgray")
  for ax, unit, grad in zip(axes[1:], (centre, corner), grads):
    ax.imshow(
      np.pad(grad, pad, constant_values=np.nan),
      cmap=cmap,
      extent=(-pad - 0.5, spatial[1] + pad - 0.5, spatial[0] + pad - 0.5, -pad - 0.5),
    )
    box(ax, last.span(unit), "cyan", "predicted field", "--")
    ax.set_title(
      (
        f"|d unit {unit} / d input| (untrained {VARIANT.value} LeNet), padding grey\n"
        f"non-zero on {rf.support_span(grad)}, field {last.span(unit)}"
      ),
      fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=9)
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(
    f"LeNet receptive fields: each of the {last.shape[0]}x{last.shape[1]} output units of the features "
    f"sees {last.size[0]}x{last.size[1]} input pixels; neighbours are {last.jump[0]} pixels apart"
  )
  save(fig, OUTDIR.value, "receptive_field")


if __name__ == "__main__":
  app.run(main)
