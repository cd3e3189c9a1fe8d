"""Tests of sgd_quad.data: the digits builder, batch streams, catalogue loading.

Catalogue datasets (CIFAR, ImageNet) are tested on tiny fake datasets written
in the real ArrayRecord format by the real catalogue builders: a subclass
keeps the builder's `_info` (its feature spec, version, label names) and only
replaces the example generator with a few random PIL images. Training code then
reads them through `tfds.data_source` exactly as it reads real data. We do not
use `tfds.testing.mock_data` for this: it works without TensorFlow for
`tfds.data_source(...)[i]`, but it replaces `data_dir` (so the checks for a
missing or TFRecord-only dataset cannot be exercised), it returns examples
already decoded (so the PNG/JPEG decoding path is never run), and in tfds
4.9.10 its mocked `__getitems__` (the batched read we use) fails with a
TypeError.
"""

import inspect
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from sklearn import datasets as sk_datasets

from sgd_quad import data, errors
from sgd_quad.data import augment, catalogue, digits, streams


def _fake_builder_cls(tfds_name: str, split_sizes: dict[str, int], make):
  """A catalogue builder whose generator yields `make(split, i)` examples."""
  base = tfds.builder_cls(tfds_name)

  class Fake(base, skip_registration=True):
    name = tfds_name
    # tfds would derive both through `importlib_resources`, not installed.
    code_path = epath.Path(inspect.getfile(base))
    pkg_dir_path = code_path.parent

    def _split_generators(self, dl_manager):
      del dl_manager
      return {
        split: self._generate_examples(split, n)
        for split, n in split_sizes.items()
      }

    def _generate_examples(self, split, n):
      for i in range(n):
        yield i, make(split, i)

  return Fake


def _cifar_example(split: str, i: int) -> dict:
  rng = np.random.default_rng([len(split), i])
  pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  # A PIL image: encoding a numpy array would need TensorFlow.
  return {
    'id': f'{split}_{i}',
    'image': Image.fromarray(pixels),
    'label': i % 10,
  }


def _cifar100_example(split: str, i: int) -> dict:
  return {**_cifar_example(split, i), 'coarse_label': i % 20}


def _imagenet_example(split: str, i: int) -> dict:
  rng = np.random.default_rng([len(split), i])
  pixels = rng.integers(0, 256, (30 + 7 * i, 50 - 3 * i, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='JPEG')
  return {
    'file_name': f'{split}_{i}.JPEG',
    'image': buffer.getvalue(),
    'label': 3 * i,
  }


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp('digits_tfds'))
  assert data.prepare_digits(path)
  return path


@pytest.fixture(scope='session')
def catalogue_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp('catalogue_tfds'))
  fakes = [
    ('cifar10', {'train': 24, 'test': 10}, _cifar_example),
    ('cifar100', {'train': 8, 'test': 3}, _cifar100_example),
    ('imagenet2012', {'train': 6, 'validation': 5}, _imagenet_example),
  ]
  for name, sizes, make in fakes:
    builder_cls = _fake_builder_cls(name, sizes, make)
    builder_cls(
      data_dir=path, file_format='array_record'
    ).download_and_prepare()
  return path


@pytest.fixture(scope='session')
def tfrecord_dir(catalogue_dir, tmp_path_factory) -> str:
  """cifar10 as tfds leaves it when prepared in the default TFRecord format."""
  path = tmp_path_factory.mktemp('tfrecord_tfds')
  version_dir = path / 'cifar10' / '3.0.2'
  shutil.copytree(os.path.join(catalogue_dir, 'cifar10', '3.0.2'), version_dir)
  info = json.loads((version_dir / 'dataset_info.json').read_text())
  info['fileFormat'] = 'tfrecord'
  (version_dir / 'dataset_info.json').write_text(json.dumps(info))
  for f in version_dir.glob('*.array_record-*'):
    f.rename(version_dir / f.name.replace('array_record', 'tfrecord'))
  return str(path)


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = data.default_config()
  cfg.update(overrides)
  return cfg


def _stream(digits_dir, *, seed=0, batch=64, p=0, count=1, aug='shift', **kw):
  cfg = _cfg(data_dir=digits_dir, augment=aug, **kw)
  return data.create_datasets(
    cfg,
    global_batch_size=batch,
    eval_batch_size=50,
    data_seed=seed,
    process_index=p,
    process_count=count,
  )


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_digits_builder_split_is_stratified_and_real(digits_dir):
  raw = sk_datasets.load_digits()
  seen = []
  sizes = {'train': digits.NUM_TRAIN, 'test': digits.NUM_TEST}
  assert sizes == {'train': 1437, 'test': 360}
  for split, size in sizes.items():
    source = tfds.data_source(
      'sklearn_digits', split=split, data_dir=digits_dir, download=False
    )
    assert len(source) == size
    arrays = digits.load_digits_split(digits_dir, split)
    rows = arrays['sklearn_index']
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(
      arrays['image'][..., 0], raw.images[rows].astype(np.uint8)
    )
    np.testing.assert_array_equal(arrays['label'], raw.target[rows])
    np.testing.assert_array_equal(source[5]['image'], arrays['image'][5])
    assert arrays['image'].max() == 16

    # Every class in proportion: within one example of its share.
    counts = np.bincount(arrays['label'], minlength=10)
    expected = np.bincount(raw.target) * size / digits.NUM_EXAMPLES
    assert np.all(np.abs(counts - expected) <= 1), (split, counts)
    seen.append(rows)
  all_rows = np.concatenate(seen)
  assert sorted(all_rows) == list(range(digits.NUM_EXAMPLES))


def test_digits_normalisation_constants(digits_dir):
  train = digits.load_digits_split(digits_dir, 'train')['image'] / 16
  assert train.mean() == pytest.approx(digits.MEAN, abs=1e-6)
  assert train.std() == pytest.approx(digits.STD, abs=1e-6)


def test_prepare_twice_is_a_noop(digits_dir):
  info = os.path.join(
    digits_dir, 'sklearn_digits', '1.0.0', 'dataset_info.json'
  )
  before = os.stat(info).st_mtime_ns
  assert not data.prepare_digits(digits_dir)
  assert os.stat(info).st_mtime_ns == before


# Loads digits.py on its own: through the package it would import grain and
# jax, seconds per child on a small machine.
_PREPARE_SCRIPT = textwrap.dedent("""
  import importlib.util, os, sys, time
  path, data_dir, go, ready = sys.argv[1:]
  spec = importlib.util.spec_from_file_location('digits', path)
  digits = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(digits)
  open(ready, 'w').close()
  while not os.path.exists(go):
    time.sleep(0.01)
  print('RESULT', int(digits.prepare_digits(data_dir)))
""")


def test_concurrent_preparation_writes_one_dataset(tmp_path):
  data_dir = tmp_path / 'tfds'
  go = tmp_path / 'go'
  readies = [tmp_path / f'ready{i}' for i in range(2)]
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', _PREPARE_SCRIPT, digits.__file__]
      + [str(data_dir), str(go), str(r)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for r in readies
  ]
  deadline = time.time() + 60
  while not all(r.exists() for r in readies) and time.time() < deadline:
    time.sleep(0.05)
  go.touch()  # Both call prepare_digits at about the same moment.
  outputs = [p.communicate(timeout=60) for p in procs]
  assert all(p.returncode == 0 for p in procs), [e for _, e in outputs]

  prepared = [
    int(line.split()[1])
    for out, _ in outputs
    for line in out.splitlines()
    if line.startswith('RESULT')
  ]
  assert sorted(prepared) == [0, 1]
  assert os.listdir(data_dir / 'sklearn_digits') == ['1.0.0']
  for split, size in (('train', digits.NUM_TRAIN), ('test', digits.NUM_TEST)):
    loaded = digits.load_digits_split(str(data_dir), split)
    assert len(loaded['label']) == size


def test_batch_is_a_pure_function_of_seed_and_step(digits_dir):
  a = _stream(digits_dir).train
  b = _stream(digits_dir).train
  later = b.batch(40)  # Built out of order on purpose.
  _assert_batches_equal(a.batch(3), b.batch(3))
  _assert_batches_equal(a.batch(40), later)
  _assert_batches_equal(a.replay(3), a.batch(3))
  assert a.batch(3)['image'].dtype == np.float32
  assert a.batch(3)['label'].dtype == np.int32
  assert a.batch(3)['image'].shape == (64, 8, 8, 1)

  spe = a.steps_per_epoch
  assert spe == 1437 // 64
  # The same position in the next epoch, and another seed, give new batches.
  assert not np.array_equal(a.global_indices(3), a.global_indices(3 + spe))
  other = _stream(digits_dir, seed=1).train
  assert not np.array_equal(a.global_indices(3), other.global_indices(3))


def test_augmentation_is_keyed_by_example_and_epoch(digits_dir):
  train = _stream(digits_dir).train
  rows = train.global_indices(0)[:16]
  first = train.batch_from_indices(rows, epoch=0)
  again = train.batch_from_indices(rows, epoch=0)
  next_epoch = train.batch_from_indices(rows, epoch=1)
  plain = train.batch_from_indices(rows, epoch=0, augment=False)
  _assert_batches_equal(first, again)
  assert not np.array_equal(first['image'], next_epoch['image'])
  np.testing.assert_array_equal(first['label'], plain['label'])

  raw = digits.load_digits_split(digits_dir, 'train')['image'][rows]
  expected = (raw / 16 - digits.MEAN) / digits.STD
  np.testing.assert_allclose(plain['image'], expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(IndexError, match=r'\[0, 1437\)'):
    train.batch_from_indices(np.array([0, 1437]), epoch=0)
  # Where a row sits in the batch does not change its augmentation.
  single = train.batch_from_indices(rows[5:6], epoch=0)
  np.testing.assert_array_equal(single['image'][0], first['image'][5])


@pytest.mark.parametrize('batch', [479, 64])
def test_each_example_at_most_once_per_epoch(digits_dir, batch):
  train = _stream(digits_dir, batch=batch).train
  spe = train.steps_per_epoch
  for epoch in (0, 1):
    rows = np.concatenate(
      [train.global_indices(epoch * spe + t) for t in range(spe)]
    )
    assert len(np.unique(rows)) == spe * batch == len(rows)
  if batch == 479:  # 1437 = 3 * 479: no remainder, all covered.
    assert spe == 3 and len(rows) == digits.NUM_TRAIN


def test_process_shards_concatenate_to_the_global_batch(digits_dir):
  whole = _stream(digits_dir, count=1)
  for count in (2, 4):
    shards = [_stream(digits_dir, p=p, count=count) for p in range(count)]
    for step in (0, 7, 30):
      parts = [s.train.batch(step) for s in shards]
      joined = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
      _assert_batches_equal(joined, whole.train.batch(step))
      assert parts[0]['image'].shape[0] == 64 // count


def test_iterate_yields_batch_of_each_step(digits_dir):
  train = _stream(digits_dir).train
  spe = train.steps_per_epoch
  start = spe - 3  # Crosses an epoch boundary.
  got = list(train.iterate(start, 6))
  assert len(got) == 6
  for i, b in enumerate(got):
    _assert_batches_equal(b, train.batch(start + i))

  no_threads = _stream(digits_dir, num_workers=0).train
  for i, b in enumerate(no_threads.iterate(start, 3)):
    _assert_batches_equal(b, got[i])


@pytest.mark.parametrize('count', [1, 2, 3])
def test_eval_stream_counts_every_example_once(digits_dir, count):
  cfg = _cfg(data_dir=digits_dir)
  shards = [
    data.create_datasets(
      cfg,
      global_batch_size=48,
      eval_batch_size=50,
      data_seed=0,
      process_index=p,
      process_count=count,
      shard_multiple=4,
    )
    for p in range(count)
  ]
  test_images = digits.load_digits_split(digits_dir, 'test')['image']
  expected = (test_images / 16 - digits.MEAN) / digits.STD
  num_batches = {len(s.test) for s in shards}
  assert len(num_batches) == 1
  rows, masks = [], 0.0
  for s in shards:
    assert s.test.local_batch_size % 4 == 0
    for k, b in enumerate(s.test):
      idx = s.test.batch_indices(k)
      real = idx >= 0
      np.testing.assert_array_equal(b['mask'], real.astype(np.float32))
      np.testing.assert_allclose(
        b['image'][real], expected[idx[real]], rtol=1e-5, atol=1e-5
      )
      assert np.all(b['image'][~real] == 0)
      rows.append(idx[real])
      masks += b['mask'].sum()
  assert masks == digits.NUM_TEST
  assert sorted(np.concatenate(rows)) == list(range(digits.NUM_TEST))


def test_train_eval_is_a_fixed_unaugmented_subset(digits_dir):
  a = _stream(digits_dir, seed=0).train_eval
  b = _stream(digits_dir, seed=5, train_eval_examples=1024).train_eval
  assert a.num_examples == 1024
  rows = np.concatenate([a.batch_indices(k) for k in range(len(a))])
  rows = rows[rows >= 0]
  assert len(np.unique(rows)) == 1024 and rows.max() < digits.NUM_TRAIN
  _assert_batches_equal(a.batch(1), b.batch(1))
  everything = _stream(digits_dir, train_eval_examples=5000).train_eval
  assert everything.num_examples == digits.NUM_TRAIN


def test_augmentations_shapes_and_determinism():
  rng = lambda: np.random.default_rng(3)
  digit = np.ones((8, 8, 1), np.uint8)
  shifted = augment.shift(digit, rng(), 1)
  assert shifted.shape == digit.shape and shifted.dtype == np.uint8
  np.testing.assert_array_equal(shifted, augment.shift(digit, rng(), 1))
  assert shifted.sum() in (64, 56, 49)  # Zero fill where it moved in.

  cifar = np.arange(32 * 32 * 3, dtype=np.uint32).reshape(32, 32, 3)
  cifar = (cifar % 251).astype(np.uint8)
  out = augment.crop_flip(cifar, rng())
  assert out.shape == (32, 32, 3)
  np.testing.assert_array_equal(out, augment.crop_flip(cifar, rng()))
  outs = {
    augment.crop_flip(cifar, np.random.default_rng(s)).tobytes()
    for s in range(8)
  }
  assert len(outs) > 4

  photo = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
  crop = augment.inception_crop(photo, rng(), 224)
  assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
  np.testing.assert_array_equal(crop, augment.inception_crop(photo, rng(), 224))
  center = augment.resize_center_crop(photo, 224)
  assert center.shape == (224, 224, 3)
  small = augment.resize_center_crop(photo[:40, :50], 224)
  assert small.shape == (224, 224, 3)


def test_augmentation_registry_and_defaults():
  assert set(data.AUGMENTATIONS) == {
    'none',
    'shift',
    'crop_flip',
    'inception_crop',
  }
  with pytest.raises(errors.ConfigError, match='data.augment') as e:
    augment.get_augmentation('mixup', (8, 8, 1), augment.identity, _cfg())
  assert 'crop_flip' in str(e.value)
  defaults = {
    name: data.datasets.resolve_augment(_cfg(name=name))
    for name in data.DATASETS
  }
  assert defaults == {
    'digits': 'none',
    'cifar10': 'crop_flip',
    'cifar100': 'crop_flip',
    'imagenet2012': 'inception_crop',
  }


@pytest.mark.parametrize(
  'overrides, batch, count, field',
  [
    ({'name': 'mnist'}, 64, 1, 'data.name'),
    ({'augment': 'mixup'}, 64, 1, 'data.augment'),
    ({'shift_pixels': -1}, 64, 1, 'data.shift_pixels'),
    ({'shift_pixels': 8}, 64, 1, 'data.shift_pixels'),
    ({'num_workers': -1}, 64, 1, 'data.num_workers'),
    ({'prefetch': 0}, 64, 1, 'data.prefetch'),
    ({'train_eval_examples': 0}, 64, 1, 'data.train_eval_examples'),
    ({}, 0, 1, 'batch_size'),
    ({}, 64, 3, 'batch_size'),
    ({}, 2048, 1, 'batch_size'),
  ],
)
def test_validate_names_the_field(overrides, batch, count, field):
  with pytest.raises(errors.ConfigError) as e:
    data.validate(
      _cfg(**overrides), global_batch_size=batch, process_count=count
    )
  assert e.value.field == field
  assert '\n' not in str(e.value)
  if field == 'data.name':
    assert 'cifar10, cifar100, digits, imagenet2012' in str(e.value)


def test_cifar_loads_through_tfds_data_source(catalogue_dir):
  for name, classes in (('cifar10', 10), ('cifar100', 100)):
    cfg = _cfg(name=name, data_dir=catalogue_dir)
    ds = data.create_datasets(
      cfg, global_batch_size=4, eval_batch_size=4, data_seed=0
    )
    assert ds.info.num_classes == classes
    assert ds.info.image_shape == (32, 32, 3)
    batch = ds.train.batch(1)
    assert batch['image'].shape == (4, 32, 32, 3)
    assert batch['image'].dtype == np.float32

    # Undo the normalisation of an unaugmented batch: the stored pixels.
    rows = ds.train.global_indices(1)
    plain = ds.train.batch_from_indices(rows, epoch=0, augment=False)
    spec = data.DATASETS[name]
    pixels = (plain['image'] * spec.std + spec.mean) * 255
    source = tfds.data_source(
      name, split='train', data_dir=catalogue_dir, download=False
    )
    np.testing.assert_allclose(
      pixels[0], source[int(rows[0])]['image'], atol=1e-3
    )
    assert int(plain['label'][0]) == int(source[int(rows[0])]['label'])
    assert sum(b['mask'].sum() for b in ds.test) == ds.info.num_test
  assert 'tensorflow' not in sys.modules


def test_imagenet_loads_and_crops(catalogue_dir):
  cfg = _cfg(name='imagenet2012', data_dir=catalogue_dir, num_workers=2)
  ds = data.create_datasets(
    cfg, global_batch_size=4, eval_batch_size=2, data_seed=0
  )
  assert ds.info == data.DatasetInfo('imagenet2012', 1000, (224, 224, 3), 6, 5)
  got = list(ds.train.iterate(0, 2))
  assert got[0]['image'].shape == (4, 224, 224, 3)
  _assert_batches_equal(got[1], ds.train.batch(1))
  # tfds shuffled the stored order; labels must follow their images.
  source = tfds.data_source(
    'imagenet2012', split='train', data_dir=catalogue_dir, download=False
  )
  stored = [int(source[int(i)]['label']) for i in ds.train.global_indices(0)]
  np.testing.assert_array_equal(got[0]['label'], stored)
  evals = list(ds.test)
  assert [b['image'].shape for b in evals] == [(2, 224, 224, 3)] * 3
  assert sum(b['mask'].sum() for b in evals) == 5
  assert 'tensorflow' not in sys.modules


def test_missing_catalogue_dataset_is_one_clear_line(tmp_path):
  empty = str(tmp_path)
  with pytest.raises(errors.ConfigError) as e:
    data.validate(_cfg(name='cifar10', data_dir=empty), global_batch_size=128)
  message = str(e.value)
  assert e.value.field == 'data.data_dir'
  assert '\n' not in message
  assert "'cifar10'" in message and empty in message
  assert 'tfds build cifar10' in message and 'array_record' in message

  with pytest.raises(errors.ConfigError, match='manual_dir'):
    data.validate(
      _cfg(name='imagenet2012', data_dir=empty), global_batch_size=128
    )


def test_tfrecord_only_dataset_names_the_conversion(tfrecord_dir):
  with pytest.raises(errors.ConfigError) as e:
    data.validate(
      _cfg(name='cifar10', data_dir=tfrecord_dir), global_batch_size=128
    )
  message = str(e.value)
  version_dir = epath.Path(tfrecord_dir) / 'cifar10' / '3.0.2'
  assert e.value.field == 'data.data_dir' and '\n' not in message
  assert 'only as tfrecord' in message
  assert (
    f'tfds convert_format --dataset_version_dir={version_dir} '
    '--out_file_format=array_record'
  ) in message


def test_converted_dataset_is_accepted(catalogue_dir, tfrecord_dir, tmp_path):
  """After `tfds convert_format` in place, ArrayRecord is an alternative."""
  root = tmp_path / 'cifar10'
  shutil.copytree(os.path.join(tfrecord_dir, 'cifar10'), root)
  version_dir = root / '3.0.2'
  info = json.loads((version_dir / 'dataset_info.json').read_text())
  info['alternativeFileFormats'] = ['array_record']
  (version_dir / 'dataset_info.json').write_text(json.dumps(info))
  for f in version_dir.glob('*.tfrecord-*'):
    shutil.copy(f, version_dir / f.name.replace('tfrecord', 'array_record'))
  name_version = catalogue.find_prepared(
    'cifar10', str(tmp_path), ('train', 'test'), config_name='cifar10'
  )
  source = streams.TfdsSource(
    catalogue.open_split(name_version, str(tmp_path), 'test')
  )
  images, labels = source.read(np.array([0, 2]))
  original = tfds.data_source(
    'cifar10', split='test', data_dir=catalogue_dir, download=False
  )
  np.testing.assert_array_equal(images[1], original[2]['image'])
  assert list(labels) == [original[0]['label'], original[2]['label']]
