"""The bundled dataset: scikit-learn's 8x8 handwritten digits as a tfds builder.

`SklearnDigits` ('sklearn_digits' in the tfds registry, 'digits' in sgd_quad
configs) turns the 1,797 real scans that ship inside scikit-learn into an
ArrayRecord dataset, so it is read through `tfds` data sources like the
catalogue datasets, with random access and no TensorFlow. The split is a fixed,
stratified `train_test_split` with seed 0: 1,437 training and 360 test examples,
each class in both splits in proportion. Examples are stored in ascending order
of their row in `load_digits()` (shuffling is disabled), so index i of a split
means the same scan everywhere. `prepare_digits` builds the files once per data
dir under a file lock, so several processes may call it at the same time.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

TFDS_NAME = 'sklearn_digits'
NUM_EXAMPLES = 1797
NUM_TEST = 360
NUM_TRAIN = NUM_EXAMPLES - NUM_TEST
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
SPLIT_SEED = 0
# Pixels are integers in 0..16 (4x4 blocks of a 32x32 bitmap, counted).
PIXEL_MAX = 16

# Statistics of pixel / 16 over all pixels of the 1,437 training images, from
# `x = split_indices()['train']; load_digits().images[x] / 16` with `.mean()`
# and `.std()` (float64). One scalar each: the digits have one channel.
MEAN = 0.305383
STD = 0.376119

DEFAULT_DATA_DIR = os.path.join(
  '~', '.cache', 'sgd_quad', 'tensorflow_datasets'
)
_LOCK_NAME = f'.{TFDS_NAME}.lock'


def split_indices() -> dict[str, np.ndarray]:
  """Returns the rows of `load_digits()` in each split, sorted ascending.

  Returns:
    {'train': int64 [1437], 'test': int64 [360]}: a stratified split drawn by
    `sklearn.model_selection.train_test_split` with `random_state=0`.
  """
  # scikit-learn takes seconds to import and is needed only to prepare the
  # files once, so it is imported here rather than with this module.
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection

  target = sk_datasets.load_digits().target
  train, test = model_selection.train_test_split(
    np.arange(NUM_EXAMPLES),
    test_size=NUM_TEST,
    stratify=target,
    random_state=SPLIT_SEED,
  )
  return {'train': np.sort(train), 'test': np.sort(test)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """tfds builder of the 1,797 8x8 digit scans bundled with scikit-learn."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 1437/360 split with seed 0.'}

  # tfds 4.9 derives `code_path` through `importlib_resources`, a package it
  # does not install, when a builder lives inside a package; the path only
  # locates checksum and metadata files, which this builder does not have.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo is built directly: `dataset_info_from_configs` would look for
    # metadata files (README, TAGS) beside this module.
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        'The 8x8 handwritten digits of scikit-learn (UCI optdigits test '
        'set): raw pixel counts 0..16, stratified train/test split.'
      ),
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
          'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
          'sklearn_index': tfds.features.Scalar(
            dtype=np.int64, doc='Row of sklearn.datasets.load_digits().'
          ),
        }
      ),
      supervised_keys=('image', 'label'),
      disable_shuffling=True,
      homepage='https://archive.ics.uci.edu/dataset/80',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn.
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    return {
      split: self._generate_examples(digits.images, digits.target, rows)
      for split, rows in split_indices().items()
    }

  def _generate_examples(self, images, targets, rows):
    for key, row in enumerate(rows):
      yield (
        key,
        {
          'image': images[row].astype(np.uint8)[..., None],
          'label': int(targets[row]),
          'sklearn_index': int(row),
        },
      )


def resolve_data_dir(data_dir: str) -> str:
  """Returns the directory the digits live in: `data_dir` or the default.

  Args:
    data_dir: a directory, or '' for `~/.cache/sgd_quad/tensorflow_datasets`.

  Returns:
    The absolute, user-expanded path.
  """
  return os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
  """Holds an exclusive `flock` on `path` (created if absent)."""
  with open(path, 'a') as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_prepared(data_dir: str = '') -> bool:
  """Returns whether the digits are prepared in `data_dir`.

  tfds renames a finished dataset folder into place, so its
  `dataset_info.json` appears only once every file is written.

  Args:
    data_dir: tfds data directory; '' for the default cache directory.

  Returns:
    True when `<data_dir>/sklearn_digits/<VERSION>/dataset_info.json` exists.
  """
  path = os.path.join(
    resolve_data_dir(data_dir),
    TFDS_NAME,
    str(SklearnDigits.VERSION),
    'dataset_info.json',
  )
  return os.path.exists(path)


def prepare_digits(data_dir: str = '') -> bool:
  """Writes the digits dataset into `data_dir` unless it is already there.

  Safe when several processes on one machine call it at once: one writes the
  files under an exclusive lock on `<data_dir>/.sklearn_digits.lock`, the others
  wait for the lock and then find the dataset prepared. tfds itself writes into
  a temporary folder and renames it when complete, so a reader never sees half
  a dataset. The lock needs a local (or flock-capable network) file system.

  Args:
    data_dir: tfds data directory; '' for the default cache directory.

  Returns:
    True when this call wrote the dataset, False when it was already there.
  """
  data_dir = resolve_data_dir(data_dir)
  if is_prepared(data_dir):
    return False

  os.makedirs(data_dir, exist_ok=True)
  with _file_lock(os.path.join(data_dir, _LOCK_NAME)):
    # Check again: another process may have finished while we waited.
    if is_prepared(data_dir):
      return False
    builder = SklearnDigits(data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare()
    return True


def load_digits_split(data_dir: str, split: str) -> dict[str, np.ndarray]:
  """Reads a prepared split into memory through the tfds data source.

  Args:
    data_dir: tfds data directory holding the prepared digits.
    split: 'train' or 'test'.

  Returns:
    {'image': uint8 [n, 8, 8, 1], 'label': int64 [n], 'sklearn_index': int64
    [n]} in stored order.
  """
  builder = SklearnDigits(data_dir=resolve_data_dir(data_dir))
  source = builder.as_data_source(split=split)
  records = source.__getitems__(list(range(len(source))))
  return {
    key: np.stack([np.asarray(r[key]) for r in records])
    for key in ('image', 'label', 'sklearn_index')
  }
