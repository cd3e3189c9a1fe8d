"""Data for sgd_quad: tfds datasets read without TensorFlow, replayable batches.

The bundled digits (`digits.SklearnDigits`, scikit-learn's 8x8 scans as a tfds
ArrayRecord builder) and the catalogue datasets CIFAR-10, CIFAR-100 and
ImageNet (prepared by the user in a tfds data dir) are read through tfds data
sources. `create_datasets` returns a `TrainStream`, whose global batch at step t
is a pure function of (data_seed, t) that any process can slice and any probe
can replay, and `EvalStream`s over the test split and a fixed training subset.
"""

from sgd_quad.data.augment import AUGMENTATIONS
from sgd_quad.data.datasets import (
  DATASETS,
  DatasetInfo,
  Datasets,
  DatasetSpec,
  create_datasets,
  default_config,
  validate,
)
from sgd_quad.data.digits import prepare_digits
from sgd_quad.data.streams import EvalStream, TrainStream

__all__ = [
  'AUGMENTATIONS',
  'DATASETS',
  'DatasetInfo',
  'DatasetSpec',
  'Datasets',
  'EvalStream',
  'TrainStream',
  'create_datasets',
  'default_config',
  'prepare_digits',
  'validate',
]
