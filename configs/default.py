"""The defaults of every training config: a modern LeNet on the bundled MNIST, AdamW, warmup then cosine.

The other configs start from ``get_config()`` here and change what they need
(``from configs import default``; ``experiments/train_lenet.py`` and ``experiments/train.py`` put
the repository root on the path).
"""

import ml_collections
from ml_collections import config_dict

from experiments.lenet.config import augment_fields


def get_config() -> ml_collections.ConfigDict:
  """Every field ``experiments.lenet.train_and_evaluate`` reads (a ResNet config adds ``model.stage_sizes`` and
  ``model.widths``)."""
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict()
  config.data.source = "idx"  # "idx": IDX files in data.dir; "tfds": tfds.data_source(data.name)
  config.data.dir = config_dict.placeholder(str)  # None: the bundled MNIST (idx), TFDS's default (tfds)
  config.data.name = "mnist"
  config.data.train_size = 0  # > 0: only the first examples of the split (smoke runs)
  config.data.test_size = 0
  config.model = ml_collections.ConfigDict()
  config.model.name = "lenet"  # "lenet": jaxconv.models.LeNet; "resnet": jaxconv.models.ResNet
  config.model.variant = "modern"  # LeNet's: "modern" (ReLU, max pooling) or "classic" (sigmoid, average pooling)
  config.model.impl = config_dict.placeholder(str)  # None: jaxconv.nn's default kernel
  config.model.dtype = config_dict.placeholder(str)  # computation dtype ("bfloat16", ...); None: float32
  config.model.param_dtype = "float32"  # the dtype the parameters are stored in
  config.num_epochs = 10
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.steps_per_call = 50  # training steps per compiled call, i.e. per progress-bar update
  config.seed = 0
  config.optimizer = "adamw"
  config.learning_rate = 3e-3  # the peak of the schedule
  config.momentum = 0.9  # sgd only
  config.weight_decay = 0.05  # adamw only (decoupled: each step shrinks weights by lr * weight_decay)
  config.schedule = "warmup_cosine"
  config.warmup_epochs = 1.0
  config.label_smoothing = 0.0  # the training loss's targets: (1 - a) * one_hot + a / num_classes
  # On-device augmentation of each training batch (jaxconv.training.augment); zeros: none.
  config.augment = augment_fields()
  # XLA options the training and evaluation programs are compiled with (fit's compiler_options).
  # XLA:CPU hands single dots and reductions to YNNPACK by default; this keeps the reductions
  # there (BatchNorm's statistics) and runs the dense layers' dots on XLA's own code: a LeNet step
  # took 2.58-2.70 instead of 2.89 ms and a ResNet epoch 2,768-2,824 instead of 2,726-2,779 images/s
  # on a 2-core Xeon (docs/training.md).
  config.compiler_options = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = 0  # devices the batch is split over (data parallelism); 0: every device
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False  # True: jax.distributed.initialize first (one process per host)
  # None: found by JAX from JAX_COORDINATOR_ADDRESS or the cluster (SLURM, Open MPI, Kubernetes, TPU).
  config.distributed.coordinator_address = config_dict.placeholder(str)  # "host:port" of process 0
  config.distributed.num_processes = config_dict.placeholder(int)
  config.distributed.process_id = config_dict.placeholder(int)
  return config
