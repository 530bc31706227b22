"""LeNet feature maps: the learned first-layer kernels and the feature maps of one digit after each
conv layer, from the checkpoint in --workdir; with no checkpoint there, a short training run of
--config (by default the seconds-long smoke config) writes one first.

  python experiments/textbook/textbook_feature_maps.py [--outdir runs/textbook/feature_maps]
  python experiments/textbook/textbook_feature_maps.py --config configs/lenet_mnist.py --workdir runs/lenet
"""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository root: experiments.lenet, configs

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from textbook import layer_outputs
from textbook_common import define_outdir, heatmap, plt, save

from experiments import lenet
from jaxconv import receptive_field as rf
from jaxconv.models import LeNet

OUTDIR = define_outdir("feature_maps")
WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Checkpoint folder of a LeNet trained with --config; default: <outdir>/lenet, trained there if empty.",
)
DIGIT = flags.DEFINE_integer("digit", 0, "Index of the test image whose feature maps are drawn.")
CONFIG = config_flags.DEFINE_config_file(
  "config",
  str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "smoke.py"),
  "Training configuration of the checkpoint.",
)

COLUMNS = 8


def trained_model(config, workdir: str) -> LeNet:
  """The LeNet of ``workdir``'s latest checkpoint, training ``config`` there first if it has none."""
  try:
    return lenet.restore_model(config, workdir)
  except FileNotFoundError:
    print(f"no checkpoint in {workdir}: training for {config.num_epochs} epoch(s) first")
    lenet.train_and_evaluate(config, workdir)
    return lenet.restore_model(config, workdir)


def draw_maps(axes, maps: np.ndarray, title: str) -> None:
  """Draw the channels of ``maps`` ``(H, W, C)`` on the first ``C`` of ``axes``, sharing one colour scale."""
  for c, ax in enumerate(axes[: maps.shape[-1]]):
    heatmap(ax, maps[..., c], f"{title} {c}", annotate=False, vmin=maps.min(), vmax=maps.max())


def main(argv: list[str]) -> None:
  """Load or train the checkpoint, print the layer outputs of one digit and draw kernels and maps."""
  del argv
  config = CONFIG.value
  workdir = WORKDIR.value or str(pathlib.Path(OUTDIR.value) / "lenet")
  model = trained_model(config, workdir)
  history = [json.loads(line) for line in (pathlib.Path(workdir) / lenet.METRICS_FILE).read_text().splitlines()]
  print(
    f"checkpoint {workdir}: {config.model.variant} LeNet after {history[-1]['epoch']} epoch(s), "
    f"test accuracy {history[-1]['test_accuracy']:.4f}"
  )

  _, test = lenet.device_data(config)
  digit = test.images[DIGIT.value : DIGIT.value + 1]
  outputs = [np.asarray(y[0]) for y in layer_outputs(model, digit)]
  names = [f.name for f in rf.walk(model, digit.shape[1:3])]
  logits = np.asarray(model(digit))[0]
  print(f"digit {DIGIT.value}: label {int(test.labels[DIGIT.value])}, predicted {int(logits.argmax())}")
  for name, y in zip(names, outputs):
    print(f"  {name:24s} -> {y.shape}, values in [{y.min():.2f}, {y.max():.2f}]")

  kernels = np.asarray(model.features.layers[0].kernel[...])[..., 0, :]  # (5, 5, 6)
  # The first activation's output (after conv1) and the second's (after conv2).
  act1, act2 = outputs[1], outputs[4]
  rows = 2 + -(-act2.shape[-1] // COLUMNS)
  fig, axes = plt.subplots(rows, COLUMNS, figsize=(2 * COLUMNS, 2.2 * rows), layout="constrained")
  for ax in axes.ravel():
    ax.axis("off")
  heatmap(axes[0, 0], digit[0, ..., 0], f"digit (label {int(test.labels[DIGIT.value])})", cmap="gray", annotate=False)
  limit = np.abs(kernels).max()
  for c in range(kernels.shape[-1]):
    heatmap(
      axes[0, c + 1], kernels[..., c], f"conv1 kernel {c}", cmap="RdBu_r", annotate=False, vmin=-limit, vmax=limit
    )
  draw_maps(axes[1], act1, "conv1 map")
  draw_maps(axes[2:].ravel(), act2, "conv2 map")
  fig.suptitle(
    f"{config.model.variant} LeNet, test accuracy {history[-1]['test_accuracy']:.1%}: conv1 kernels (red +, blue -) "
    "and the feature maps of one digit after each conv + activation"
  )
  save(fig, OUTDIR.value, "feature_maps")


if __name__ == "__main__":
  app.run(main)
