"""Speedrun: the unchanged modern LeNet-5 (61,706 parameters) to >= 99.0% MNIST test accuracy in 2 epochs.

Adam with a one-cycle schedule peaking at 1.5e-2 (15% of the steps warming up), batch 128, label
smoothing 0.1 and random shifts of up to one pixel on the device, each epoch one compiled call.
On a 2-core AMD EPYC (Zen 4, 2026-12-06), after conv1 moved to the extension's single-channel loops
(which round differently), seeds 0-5 reached 99.09, 99.13, 99.02, 99.18, 99.11, 99.09% after 2 epochs
(mean 99.10%); the previous peak of 2e-2 gave 98.99, 99.10, 99.14, 99.03, 99.03, 99.12% (seed 0 short
by one test image), 2e-2 with half an epoch of warm-up 99.04-99.13%, 1.2e-2 99.01-99.08%, label
smoothing 0.05 or 0.15 (at 1.5e-2) 99.02-99.19% and 99.00-99.14%: every variant sits within about
0.1% of the bar, so a change of rounding can move a seed across it.
Before, with the peak at 2e-2, seeds 0, 1, 2 reached 99.02%, 99.05%, 99.09% on a 2-core Sapphire
Rapids Xeon (99.05%, 99.05%, 99.15% before small oneDNN problems were split along the batch and the
compiler options of ``configs/default.py``; 99.09%, 99.16%, 99.17% before oneDNN added the conv biases
in its own calls). Measured alternatives there, 2 epochs, seeds 0/1/2: batch 128 at 1e-2 (warmup 0.5
epoch) 98.98/98.95/99.01, at 2e-2 99.05/99.08/99.04, at 1.5e-2 (warmup 0.3) 99.17/99.17/99.06; batch
64 at 1.5e-2 99.14/99.08/99.22 (twice the steps: slower on both sides), at 5e-3 98.88/98.99/98.96;
without the shifts 98.82-98.95; label smoothing 0.05 (batch 64) 99.02/99.20/99.16.
``experiments/bench_training.py --time-to-accuracy 0.99 --config configs/lenet_speedrun.py --seeds 0 1 2``
races it against the same recipe in PyTorch eager.
"""

import ml_collections

from configs import default
from jaxconv.training import augment


def get_config() -> ml_collections.ConfigDict:
  """Hyperparameters of the speedrun."""
  config = default.get_config()
  config.model.variant = "modern"
  config.num_epochs = 2
  config.batch_size = 128
  config.eval_batch_size = 10000  # the whole test set in one batch: one evaluation call, no loop
  config.steps_per_call = 10000  # more than an epoch's steps: one compiled call per epoch, one host sync
  config.optimizer = "adam"
  config.learning_rate = 1.5e-2
  config.schedule = "one_cycle"
  config.warmup_epochs = 0.3  # one_cycle's pct_start = warmup_epochs / num_epochs = 0.15
  config.label_smoothing = 0.1
  config.augment = augment.config_fields(max_shift=1)  # integer shifts in [-1, 1] per axis, edge fill
  return config
