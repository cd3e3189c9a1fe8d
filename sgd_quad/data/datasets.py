"""The data block of the config: dataset registry, validation, construction.

`DATASETS` names what sgd_quad trains on ('digits', 'cifar10', 'cifar100',
'imagenet2012') with each dataset's tfds name, splits, input shape,
normalisation and default augmentation. `validate` checks a data config cheaply
(reading at most a catalogue dataset's metadata), and `create_datasets` builds
the training stream, the test stream and a train-loss evaluation stream for one
process of a run.
"""

import dataclasses
import functools
from typing import NamedTuple

import ml_collections
import numpy as np

from sgd_quad import errors
from sgd_quad.data import augment as augment_lib
from sgd_quad.data import catalogue, digits, streams

# The fixed subset of training examples evaluated for the train loss does not
# depend on data_seed, so runs with different seeds report comparable numbers.
_TRAIN_EVAL_SEED = 0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What sgd_quad needs to know about one dataset.

  Attributes:
    tfds_name: name in the tfds registry.
    train_split: tfds split trained on.
    test_split: tfds split evaluated as 'test'.
    num_classes: label count.
    image_shape: model input [H, W, C] after preprocessing.
    num_train: examples in the train split (for cheap checks).
    num_test: examples in the test split.
    pixel_max: pixel value that maps to 1.0 before standardising.
    mean: per-channel mean of pixel / pixel_max over the train split.
    std: per-channel standard deviation of pixel / pixel_max.
    default_augment: what 'default' resolves to.
    eval_transform: deterministic per-example transform to `image_shape`.
    in_memory: read the splits into memory once (small datasets).
  """

  tfds_name: str
  train_split: str
  test_split: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  pixel_max: float
  mean: tuple[float, ...]
  std: tuple[float, ...]
  default_augment: str
  eval_transform: augment_lib.Transform = augment_lib.identity
  in_memory: bool = True


# CIFAR statistics: mean and standard deviation of pixel / 255 over all pixels
# of the 50,000 training images, per channel (the usual published values).
DATASETS: dict[str, DatasetSpec] = {
  'digits': DatasetSpec(
    tfds_name=digits.TFDS_NAME,
    train_split='train',
    test_split='test',
    num_classes=digits.NUM_CLASSES,
    image_shape=digits.IMAGE_SHAPE,
    num_train=digits.NUM_TRAIN,
    num_test=digits.NUM_TEST,
    pixel_max=digits.PIXEL_MAX,
    mean=(digits.MEAN,),
    std=(digits.STD,),
    default_augment='none',
  ),
  'cifar10': DatasetSpec(
    tfds_name='cifar10',
    train_split='train',
    test_split='test',
    num_classes=10,
    image_shape=(32, 32, 3),
    num_train=50_000,
    num_test=10_000,
    pixel_max=255,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    default_augment='crop_flip',
  ),
  'cifar100': DatasetSpec(
    tfds_name='cifar100',
    train_split='train',
    test_split='test',
    num_classes=100,
    image_shape=(32, 32, 3),
    num_train=50_000,
    num_test=10_000,
    pixel_max=255,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    default_augment='crop_flip',
  ),
  # The usual ImageNet channel statistics; 'test' is the validation split.
  'imagenet2012': DatasetSpec(
    tfds_name='imagenet2012',
    train_split='train',
    test_split='validation',
    num_classes=1000,
    image_shape=(224, 224, 3),
    num_train=1_281_167,
    num_test=50_000,
    pixel_max=255,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    default_augment='inception_crop',
    eval_transform=functools.partial(augment_lib.resize_center_crop, size=224),
    in_memory=False,
  ),
}


class DatasetInfo(NamedTuple):
  """Facts about the dataset of a run.

  Attributes:
    name: sgd_quad name, for example 'digits'.
    num_classes: label count.
    image_shape: model input [H, W, C].
    num_train: training examples.
    num_test: test examples.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int


class Datasets(NamedTuple):
  """The streams of one process of a run.

  Attributes:
    train: the training batches, a function of the step.
    test: the whole test split, padded and masked.
    train_eval: a fixed subset of the training split, not augmented.
    info: facts about the dataset.
  """

  train: streams.TrainStream
  test: streams.EvalStream
  train_eval: streams.EvalStream
  info: DatasetInfo


def default_config() -> ml_collections.ConfigDict:
  """Returns the data block of the config with its defaults.

  Fields:
    name: one of `DATASETS`.
    data_dir: tfds data dir; '' means ~/.cache/sgd_quad/tensorflow_datasets
      for the digits (prepared on first use) and tfds's default
      ($TFDS_DATA_DIR or ~/tensorflow_datasets) for catalogue datasets.
    augment: 'default' or one of `AUGMENTATIONS`.
    shift_pixels: largest translation of 'shift', in pixels.
    num_workers: background threads that build batches (0: none).
    prefetch: batches built ahead.
    train_eval_examples: size of the training subset evaluated for the train
      loss (all training examples if larger).

  Returns:
    A ConfigDict.
  """
  return ml_collections.ConfigDict(
    {
      'name': 'digits',
      'data_dir': '',
      'augment': 'default',
      'shift_pixels': 1,
      'num_workers': 2,
      'prefetch': 2,
      'train_eval_examples': 1024,
    }
  )


def get_spec(name: str) -> DatasetSpec:
  """Returns the registry entry of a dataset.

  Args:
    name: a key of `DATASETS`.

  Returns:
    Its `DatasetSpec`.

  Raises:
    ConfigError: (field 'data.name') for an unknown name.
  """
  if name not in DATASETS:
    raise errors.ConfigError(
      'data.name',
      f'unknown dataset {name!r}; allowed: {", ".join(sorted(DATASETS))}',
    )
  return DATASETS[name]


def resolve_augment(data_cfg: ml_collections.ConfigDict) -> str:
  """Returns the augmentation name a config means ('default' resolved).

  Args:
    data_cfg: the data block.

  Returns:
    A key of `AUGMENTATIONS`.
  """
  name = data_cfg.augment
  if name == 'default':
    name = get_spec(data_cfg.name).default_augment
  return name


def _is_int(value) -> bool:
  return isinstance(value, int | np.integer) and not isinstance(value, bool)


def validate(
  data_cfg: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  process_count: int = 1,
  shard_multiple: int = 1,
) -> None:
  """Checks the data block before anything is prepared or compiled.

  Cheap: prepares nothing. For catalogue datasets it lists `data_dir` and reads
  the dataset's `dataset_info.json`.

  Args:
    data_cfg: the data block.
    global_batch_size: B, rows of a training step over all processes.
    process_count: P, processes of the run.
    shard_multiple: local devices; B / P must divide by it.

  Raises:
    ConfigError: naming the first bad field with what is allowed.
  """
  spec = get_spec(data_cfg.name)
  augment_name = resolve_augment(data_cfg)
  if augment_name not in augment_lib.AUGMENTATIONS:
    raise errors.ConfigError(
      'data.augment',
      f'unknown augmentation {data_cfg.augment!r}; allowed: '
      f'{augment_lib.allowed_names()}',
    )

  limit = min(spec.image_shape[:2])
  shift_pixels = data_cfg.shift_pixels
  if not _is_int(shift_pixels) or not 0 <= shift_pixels < limit:
    raise errors.ConfigError(
      'data.shift_pixels',
      f'must be an integer in [0, {limit}) for {data_cfg.name}, got '
      f'{shift_pixels!r}',
    )
  for field, low in (
    ('num_workers', 0),
    ('prefetch', 1),
    ('train_eval_examples', 1),
  ):
    value = data_cfg[field]
    if not _is_int(value) or value < low:
      raise errors.ConfigError(
        f'data.{field}', f'must be an integer >= {low}, got {value!r}'
      )

  if not _is_int(global_batch_size) or global_batch_size < 1:
    raise errors.ConfigError(
      'batch_size',
      f'must be a positive integer, got {global_batch_size!r}',
    )
  if global_batch_size % process_count:
    raise errors.ConfigError(
      'batch_size',
      f'global batch {global_batch_size} must divide by the process count '
      f'{process_count}',
    )
  if (global_batch_size // process_count) % shard_multiple:
    raise errors.ConfigError(
      'batch_size',
      f'per-process batch {global_batch_size // process_count} must divide '
      f'by the {shard_multiple} local devices',
    )
  if global_batch_size > spec.num_train:
    raise errors.ConfigError(
      'batch_size',
      f'global batch {global_batch_size} exceeds the {spec.num_train} '
      f'training examples of {data_cfg.name}',
    )

  if not isinstance(data_cfg.data_dir, str):
    raise errors.ConfigError(
      'data.data_dir', f'must be a path string, got {data_cfg.data_dir!r}'
    )
  if data_cfg.name != 'digits':
    catalogue.find_prepared(
      spec.tfds_name,
      data_cfg.data_dir,
      (spec.train_split, spec.test_split),
      config_name=data_cfg.name,
    )


def make_normalize(spec: DatasetSpec) -> streams.Normalize:
  """Returns uint8 batch -> float32 (pixel / pixel_max - mean) / std.

  Args:
    spec: the dataset.

  Returns:
    A function of a uint8 array [..., C].
  """
  scale = np.float32(1.0 / spec.pixel_max)
  mean = np.asarray(spec.mean, np.float32)
  inv_std = np.asarray(1.0 / np.asarray(spec.std), np.float32)

  def normalize(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) * scale - mean) * inv_std

  return normalize


def _open_splits(
  name: str, spec: DatasetSpec, data_dir: str
) -> tuple[streams.Source, streams.Source]:
  """Returns the (train, test) sources, preparing the digits if needed."""
  if name == 'digits':
    digits.prepare_digits(data_dir)
    return tuple(
      streams.ArraySource(split['image'], split['label'])
      for split in (
        digits.load_digits_split(data_dir, spec.train_split),
        digits.load_digits_split(data_dir, spec.test_split),
      )
    )

  name_version = catalogue.find_prepared(
    spec.tfds_name,
    data_dir,
    (spec.train_split, spec.test_split),
    config_name=name,
  )
  sources = []
  for split in (spec.train_split, spec.test_split):
    source = streams.TfdsSource(
      catalogue.open_split(name_version, data_dir, split)
    )
    # TODO(sgd_quad): tfds parses every stored example in Python (a few
    # tenths of a millisecond each here), so reading CIFAR into memory takes
    # tens of seconds per process at start-up; parallel reads in processes
    # or a cache of the decoded arrays would remove that.
    sources.append(streams.to_memory(source) if spec.in_memory else source)
  return tuple(sources)


def create_datasets(
  data_cfg: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  eval_batch_size: int,
  data_seed: int,
  process_index: int = 0,
  process_count: int = 1,
  shard_multiple: int = 1,
) -> Datasets:
  """Builds the data streams of one process of a run.

  Validates the config, prepares the digits on first use (safe when several
  processes do it at once), opens catalogue datasets from `data_dir`.

  Args:
    data_cfg: the data block (see `default_config`).
    global_batch_size: B, training rows per step over all processes.
    eval_batch_size: evaluation rows per batch on this process (rounded up to
      a multiple of `shard_multiple`, lowered when one batch holds the split).
    data_seed: non-negative seed of the batch order and augmentations.
    process_index: p, this process.
    process_count: P, processes of the run.
    shard_multiple: local devices; local batches must divide by it.

  Returns:
    `Datasets(train, test, train_eval, info)`.

  Raises:
    ConfigError: for a bad field of the data block or batch size.
  """
  validate(
    data_cfg,
    global_batch_size=global_batch_size,
    process_count=process_count,
    shard_multiple=shard_multiple,
  )
  spec = get_spec(data_cfg.name)
  train_source, test_source = _open_splits(
    data_cfg.name, spec, data_cfg.data_dir
  )
  if global_batch_size > len(train_source):
    raise errors.ConfigError(
      'batch_size',
      f'global batch {global_batch_size} exceeds the {len(train_source)} '
      f'training examples in {data_cfg.data_dir or "the default data dir"}',
    )

  normalize = make_normalize(spec)
  workers = {
    'num_workers': data_cfg.num_workers,
    'prefetch': data_cfg.prefetch,
  }
  shards = {'process_index': process_index, 'process_count': process_count}
  augment = augment_lib.get_augmentation(
    resolve_augment(data_cfg), spec.image_shape, spec.eval_transform, data_cfg
  )
  train = streams.TrainStream(
    train_source,
    global_batch_size=global_batch_size,
    data_seed=data_seed,
    normalize=normalize,
    augment=augment,
    eval_transform=spec.eval_transform,
    **shards,
    **workers,
  )
  eval_kwargs = dict(
    batch_size=eval_batch_size,
    image_shape=spec.image_shape,
    normalize=normalize,
    eval_transform=spec.eval_transform,
    shard_multiple=shard_multiple,
    **shards,
    **workers,
  )
  test = streams.EvalStream(test_source, **eval_kwargs)

  num_train = len(train_source)
  subset = np.random.default_rng(_TRAIN_EVAL_SEED).permutation(num_train)
  subset = np.sort(subset[: data_cfg.train_eval_examples])
  train_eval = streams.EvalStream(train_source, indices=subset, **eval_kwargs)

  info = DatasetInfo(
    name=data_cfg.name,
    num_classes=spec.num_classes,
    image_shape=spec.image_shape,
    num_train=num_train,
    num_test=len(test_source),
  )
  return Datasets(train=train, test=test, train_eval=train_eval, info=info)
