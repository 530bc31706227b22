"""Modern LeNet-5 (ReLU, max pooling) on the bundled MNIST: AdamW (weight decay 0.01), one-cycle
schedule over 15 epochs, label smoothing, on-device augmentation (shifts of up to 2 pixels,
rotations up to 10 degrees, zoom up to 10%).

On a 2-core Sapphire Rapids Xeon (impl="auto": oneDNN, with the extension's direct loops for
conv2's input gradient and conv1's kernel gradient, small problems split along the batch, and
default.py's compiler_options) seeds 0, 1, 2 reached 99.38%, 99.44%, 99.32% (mean 99.38%; the
issue's bar is a mean of 99.3% with each seed at 99.2%); before the batch split and the compiler
options, 99.38%, 99.41%, 99.45%. The 10-epoch recipe
(warmup 2) had reached 99.28%, 99.37%, 99.34% on oneDNN's own gradients but 99.31%, 99.30%, 99.25%
(mean 99.29%) with the direct loops' rounding: it sat on the bar, and the extra epochs give it a
margin. With weight decay 0.05 (10 epochs) the seeds reached 99.47%, 99.40%, 99.28%. Earlier, with
plain Adam: 99.28%, 99.36%, 99.25%; Adam for 12 epochs 99.32%, 99.33%, 99.22%; Adam at 4e-3
99.24%, 99.30%, 99.25%. The first recipe (AdamW 3e-3, warmup + cosine, no augmentation) reached
99.16%."""

import ml_collections

from configs import default
from jaxconv.training import augment


def get_config() -> ml_collections.ConfigDict:
  """Hyperparameters of the main training run."""
  config = default.get_config()
  config.model.variant = "modern"
  config.num_epochs = 15
  config.batch_size = 128
  config.optimizer = "adamw"
  config.weight_decay = 0.01  # decoupled: each step shrinks the weights by lr * 0.01
  config.learning_rate = 5e-3
  config.schedule = "one_cycle"
  config.warmup_epochs = 3.0  # one_cycle's pct_start = warmup_epochs / num_epochs = 0.2
  config.label_smoothing = 0.1
  config.augment = augment.config_fields(max_shift=2, max_rotation=10.0, max_scale=0.1)
  return config
