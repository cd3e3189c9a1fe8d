"""Catalogue datasets (CIFAR, ImageNet) read from a user-prepared tfds data dir.

They cannot be downloaded at run time: the user prepares them once, in the
ArrayRecord file format, with TensorFlow installed (`tfds build ...
--file_format=array_record`). Training then reads them with
`tfds.data_source`, which needs no TensorFlow: it parses the stored
`tf.train.Example` protos in Python and decodes PNG/JPEG images with PIL.
`find_prepared` checks a data dir before anything starts and explains, in one
line, how to prepare or convert what is missing.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from sgd_quad import errors

# Formats `tfds.data_source` can read with random access.
RANDOM_ACCESS_FORMATS = frozenset(
  f.value for f in tfds.core.FileFormat.with_random_access()
)


def resolve_data_dir(data_dir: str) -> str:
  """Returns `data_dir`, or tfds's default data dir if it is empty.

  Args:
    data_dir: a directory or ''.

  Returns:
    The directory to search, user-expanded; tfds's default is $TFDS_DATA_DIR
    or ~/tensorflow_datasets.
  """
  if not data_dir:
    data_dir = tfds.core.constants.get_default_data_dir()
  return os.path.expanduser(data_dir)


def build_command(tfds_name: str, data_dir: str) -> str:
  """Returns the shell command that prepares `tfds_name` for sgd_quad.

  Args:
    tfds_name: catalogue name, for example 'cifar10'.
    data_dir: where the prepared files should go.

  Returns:
    A `tfds build` command line writing ArrayRecord files (it needs
    TensorFlow, and for ImageNet the manually downloaded archives).
  """
  manual = ''
  if tfds_name.startswith('imagenet'):
    manual = ' --manual_dir=DIR_WITH_ILSVRC2012_TARS'
  return (
    f'tfds build {tfds_name} --data_dir={data_dir}{manual} '
    '--file_format=array_record'
  )


def _read_info(version_dir: epath.Path) -> dict[str, Any]:
  return json.loads((version_dir / 'dataset_info.json').read_text())


def find_prepared(
  tfds_name: str, data_dir: str, splits: Sequence[str], *, config_name: str
) -> str:
  """Checks that `data_dir` holds `tfds_name` in a random-access format.

  Reads only directory listings and `dataset_info.json`. Picks the builder's
  current version if present, else the newest supported version present.

  Args:
    tfds_name: catalogue name, for example 'imagenet2012'.
    data_dir: tfds data directory ('' for tfds's default).
    splits: split names that must exist, for example ('train', 'test').
    config_name: the sgd_quad name of the dataset, for messages.

  Returns:
    'name:version' to pass to `tfds.data_source`.

  Raises:
    ConfigError: (field 'data.data_dir') when the dataset or a split is
      missing, or stored only as TFRecord; the message is one line with the
      path searched and the command that prepares or converts it.
  """
  data_dir = resolve_data_dir(data_dir)
  root = epath.Path(data_dir) / tfds_name
  builder_cls = tfds.builder_cls(tfds_name)
  wanted = [str(builder_cls.VERSION)]
  wanted += [str(v) for v in getattr(builder_cls, 'SUPPORTED_VERSIONS', [])]
  present = []
  if root.is_dir():
    present = sorted(
      p.name for p in root.iterdir() if (p / 'dataset_info.json').exists()
    )
  what = f'dataset {config_name!r} (tfds {tfds_name!r})'
  if not present:
    raise errors.ConfigError(
      'data.data_dir',
      f'{what} not found: no {root}/<version>/dataset_info.json; prepare it '
      f'once where TensorFlow is installed with `'
      f'{build_command(tfds_name, data_dir)}`, or point data.data_dir at the '
      'directory that holds it',
    )
  usable = [v for v in wanted if v in present]
  if not usable:
    raise errors.ConfigError(
      'data.data_dir',
      f'{what} in {root} has versions {", ".join(present)}, but this tfds '
      f'reads {", ".join(wanted)}; rebuild it with `'
      f'{build_command(tfds_name, data_dir)}`',
    )

  version_dir = root / usable[0]
  info = _read_info(version_dir)
  formats = [info.get('fileFormat') or 'tfrecord']
  formats += list(info.get('alternativeFileFormats', []))
  if not RANDOM_ACCESS_FORMATS.intersection(formats):
    raise errors.ConfigError(
      'data.data_dir',
      f'{what} in {version_dir} is stored only as {"/".join(formats)}, which '
      'has no random access; convert it in place (where TensorFlow is '
      f'installed) with `tfds convert_format --dataset_version_dir='
      f'{version_dir} --out_file_format=array_record`',
    )
  stored = {s['name'] for s in info.get('splits', [])}
  missing = [s for s in splits if s not in stored]
  if missing:
    raise errors.ConfigError(
      'data.data_dir',
      f'{what} in {version_dir} lacks split(s) {", ".join(missing)} (has '
      f'{", ".join(sorted(stored)) or "none"}); rebuild it with `'
      f'{build_command(tfds_name, data_dir)}`',
    )
  return f'{tfds_name}:{usable[0]}'


def open_split(name_version: str, data_dir: str, split: str) -> Sequence[Any]:
  """Opens one split as a random-access tfds data source (no TensorFlow).

  Args:
    name_version: 'name:version' from `find_prepared`.
    data_dir: tfds data directory ('' for tfds's default).
    split: split name.

  Returns:
    A sequence of decoded examples (dicts of numpy arrays); `__getitems__`
    reads many at once.
  """
  return tfds.data_source(
    name_version,
    split=split,
    data_dir=resolve_data_dir(data_dir),
    download=False,
  )
