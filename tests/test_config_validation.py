"""Bad input is refused before anything is compiled or written.

One test per case: each bad config must raise `ConfigError` whose message is
one line naming the field and what is allowed, and leave the workdir
untouched. Wrong types are built as a config file would build them (a fresh
ConfigDict), since overriding a field of an existing ConfigDict already
refuses another type.
"""

import importlib
import os
import subprocess
import sys

import ml_collections
import pytest
from conftest import tiny_config

from sgd_quad import config_lib, trainer
from sgd_quad.errors import ConfigError


def _config(digits_dir, field=None, value=None, **also):
  """The tiny config as a config file would write it, with `field=value`."""
  tree = tiny_config(digits_dir, **also).to_dict()
  if field is not None:
    *parents, leaf = field.split('.')
    node = tree
    for parent in parents:
      node = node[parent]
    if value is _DELETE:
      del node[leaf]
    else:
      node[leaf] = value
  return ml_collections.ConfigDict(tree)


_DELETE = object()

# (field set, value, field named in the error, text naming what is allowed)
CASES = {
  # Unknown or missing keys in a config file.
  'unknown top-level key': ('foo', 1, 'foo', 'allowed: init_seed, data_seed'),
  'misspelt block': ('optimiser', {}, 'optimiser', 'allowed: init_seed'),
  'unknown key in a block': (
    'optimizer.lr',
    0.1,
    'optimizer.lr',
    'allowed in optimizer: learning_rate, momentum',
  ),
  'unknown data key': ('data.dataset', 'x', 'data.dataset', 'allowed in data'),
  'unknown averaging key': (
    'averaging.ema',
    0.9,
    'averaging.ema',
    'allowed in averaging: ',
  ),
  'unknown probes key': ('probes.eta', 1.0, 'probes.eta', 'allowed in probes'),
  'missing field': ('model.dtype', _DELETE, 'model.dtype', 'missing field'),
  # Wrong types.
  'num_steps as a string': ('num_steps', '40', 'num_steps', 'positive integer'),
  'num_steps as a float': ('num_steps', 40.0, 'num_steps', 'positive integer'),
  'batch_size as a bool': (
    'batch_size',
    True,
    'batch_size',
    'positive integer',
  ),
  'learning rate as text': (
    'optimizer.learning_rate',
    'fast',
    'optimizer.learning_rate',
    'positive number',
  ),
  'momentum as text': (
    'optimizer.momentum',
    '0.9',
    'optimizer.momentum',
    '[0, 1)',
  ),
  'nesterov as text': (
    'optimizer.nesterov',
    'yes',
    'optimizer.nesterov',
    'True or False',
  ),
  'bn_momentum as text': (
    'model.bn_momentum',
    '0.9',
    'model.bn_momentum',
    '[0, 1)',
  ),
  'warmup as a float': (
    'schedule.warmup_steps',
    2.5,
    'schedule.warmup_steps',
    'an integer >= 0',
  ),
  'boundaries as text': (
    'schedule.boundaries',
    '10,20',
    'schedule.boundaries',
    'a tuple of integers',
  ),
  'ema_decays as a float': (
    'averaging.ema_decays',
    0.99,
    'averaging.ema_decays',
    'tuple of floats',
  ),
  'swa as text': ('averaging.swa', 'yes', 'averaging.swa', 'bool'),
  'data_dir as a number': ('data.data_dir', 3, 'data.data_dir', 'path string'),
  'shift_pixels as a float': (
    'data.shift_pixels',
    1.0,
    'data.shift_pixels',
    'integer in [0, 8)',
  ),
  'probe steps as an int': ('probes.steps', 5, 'probes.steps', 'a tuple'),
  'probe grid as text': ('probes.eta_min', 'a', 'probes.eta_min', '0 <'),
  'figures as text': ('probes.figures', 'yes', 'probes.figures', 'True or'),
  'seed as a float': ('init_seed', 1.5, 'init_seed', 'an integer >= 0'),
  'init_from as a number': ('init_from', 5, 'init_from', 'a workdir path'),
  # Non-positive rates, sizes and periods.
  'zero learning rate': (
    'optimizer.learning_rate',
    0.0,
    'optimizer.learning_rate',
    'positive number',
  ),
  'negative learning rate': (
    'optimizer.learning_rate',
    -0.1,
    'optimizer.learning_rate',
    'positive number',
  ),
  'NaN learning rate': (
    'optimizer.learning_rate',
    float('nan'),
    'optimizer.learning_rate',
    'positive number',
  ),
  'negative weight decay': (
    'optimizer.weight_decay',
    -1e-4,
    'optimizer.weight_decay',
    '>= 0',
  ),
  'zero batch': ('batch_size', 0, 'batch_size', 'positive integer'),
  'negative eval batch': (
    'eval_batch_size',
    -1,
    'eval_batch_size',
    'positive integer',
  ),
  'zero steps': ('num_steps', 0, 'num_steps', 'positive integer'),
  'zero log period': ('log_every', 0, 'log_every', 'positive integer'),
  'zero eval period': ('eval_every', 0, 'eval_every', 'positive integer'),
  'zero checkpoint period': (
    'checkpoint.every',
    0,
    'checkpoint.every',
    'positive integer',
  ),
  'one checkpoint kept': ('checkpoint.keep', 1, 'checkpoint.keep', '>= 2'),
  'zero 1/t decay steps': (
    'schedule.decay_steps',
    0.0,
    'schedule.decay_steps',
    'positive number',
  ),
  'zero decay factor': (
    'schedule.decay_factor',
    0.0,
    'schedule.decay_factor',
    'positive number',
  ),
  'zero SWA period': (
    'averaging.swa_period',
    0,
    'averaging.swa_period',
    '>= 1',
  ),
  'zero EMA period': (
    'averaging.ema_period',
    0,
    'averaging.ema_period',
    '>= 1',
  ),
  'zero LAWA period': (
    'averaging.lawa_period',
    0,
    'averaging.lawa_period',
    '>= 1',
  ),
  'zero two-point gap': (
    'averaging.two_point_gaps',
    (0,),
    'averaging.two_point_gaps',
    '>= 1',
  ),
  'zero recompute batches': (
    'averaging.recompute_batches',
    0,
    'averaging.recompute_batches',
    '>= 1',
  ),
  'zero memory budget': (
    'averaging.memory_budget_mb',
    0.0,
    'averaging.memory_budget_mb',
    '> 0',
  ),
  'negative ghost batch': (
    'model.ghost_batch_size',
    -1,
    'model.ghost_batch_size',
    'an integer >= 0',
  ),
  'zero prefetch': ('data.prefetch', 0, 'data.prefetch', '>= 1'),
  'negative workers': ('data.num_workers', -1, 'data.num_workers', '>= 0'),
  'negative probe period': ('probes.every', -1, 'probes.every', '>= 0'),
  'zero probe grid points': ('probes.num_etas', 0, 'probes.num_etas', '>= 1'),
  'zero probe step size': ('probes.eta_min', 0.0, 'probes.eta_min', '0 <'),
  'negative seed': ('data_seed', -1, 'data_seed', 'an integer >= 0'),
  # Decays and momenta outside [0, 1).
  'EMA decay of 1': (
    'averaging.ema_decays',
    (0.9, 1.0),
    'averaging.ema_decays',
    '[0, 1)',
  ),
  'negative EMA decay': (
    'averaging.ema_decays',
    (-0.1,),
    'averaging.ema_decays',
    '[0, 1)',
  ),
  'momentum of 1': ('optimizer.momentum', 1.0, 'optimizer.momentum', '[0, 1)'),
  'negative momentum': (
    'optimizer.momentum',
    -0.1,
    'optimizer.momentum',
    '[0, 1)',
  ),
  'BN momentum above 1': (
    'model.bn_momentum',
    1.5,
    'model.bn_momentum',
    '[0, 1)',
  ),
  'label smoothing of 1': (
    'optimizer.label_smoothing',
    1.0,
    'optimizer.label_smoothing',
    '[0, 1)',
  ),
  # Steps beyond the run (num_steps is 40).
  'probe step past the end': ('probes.steps', (40,), 'probes.steps', '[0, 40)'),
  'SWA start past the end': (
    'averaging.swa_start',
    41,
    'averaging.swa_start',
    'num_steps (40)',
  ),
  'EMA start past the end': (
    'averaging.ema_start',
    41,
    'averaging.ema_start',
    'num_steps (40)',
  ),
  'two-point gap past the end': (
    'averaging.two_point_gaps',
    (41,),
    'averaging.two_point_gaps',
    'at most num_steps (40)',
  ),
  'warmup as long as the run': (
    'schedule.warmup_steps',
    40,
    'schedule.warmup_steps',
    '< num_steps (40)',
  ),
  '1/t decay start past the end': (
    'schedule.decay_start',
    40,
    'schedule.decay_start',
    '[0, 40)',
  ),
  # Unknown registry names.
  'unknown model': ('model.name', 'resnet9000', 'model.name', 'resnet_tiny'),
  'unknown dtype': ('model.dtype', 'int8', 'model.dtype', 'float32, bfloat16'),
  'unknown dataset': ('data.name', 'mnist', 'data.name', 'cifar10, cifar100'),
  'unknown schedule': ('schedule.name', 'exp', 'schedule.name', 'cosine'),
  'unknown augmentation': (
    'data.augment',
    'mixup',
    'data.augment',
    'crop_flip',
  ),
  'unknown BN mode': (
    'averaging.swa_bn',
    'magic',
    'averaging.swa_bn',
    "'average', 'recompute', 'live'",
  ),
  'unknown probe BN mode': (
    'probes.bn_modes',
    ('magic',),
    'probes.bn_modes',
    'batch, running',
  ),
  'unknown probe direction': (
    'probes.direction',
    'newton',
    'probes.direction',
    'gradient, update',
  ),
  'unknown optimizer-state choice': (
    'init_from_opt_state',
    'drop',
    'init_from_opt_state',
    'keep, reset',
  ),
  'missing LR file': (
    'schedule.file',
    '/nonexistent/lr.npy',
    'schedule.file',
    '1-D .npy array',
  ),
}


def _assert_one_line(error: ConfigError, field: str, allowed: str):
  message = str(error)
  assert '\n' not in message
  assert error.field == field
  assert message.startswith(f'config.{field}: ')
  assert allowed in message


@pytest.mark.parametrize('case', list(CASES))
def test_bad_field_is_one_line_and_writes_nothing(tmp_path, digits_dir, case):
  field, value, named, allowed = CASES[case]
  config = _config(digits_dir, field, value)
  if field == 'schedule.file':
    config.schedule.name = 'file'
  workdir = tmp_path / 'never'
  with pytest.raises(ConfigError) as info:
    trainer.train_and_evaluate(config, os.fspath(workdir))
  _assert_one_line(info.value, named, allowed)
  assert not workdir.exists()


def test_global_batch_not_divisible_by_the_devices(digits_dir):
  config = _config(digits_dir, 'batch_size', 60)
  with pytest.raises(ConfigError) as info:
    config_lib.validate(config, device_count=8, process_count=1)
  _assert_one_line(info.value, 'batch_size', 'a multiple of the device count')


def test_ghost_batch_must_divide_the_per_device_batch(digits_dir):
  config = _config(digits_dir, 'model.ghost_batch_size', 3)
  with pytest.raises(ConfigError) as info:
    config_lib.validate(config, device_count=8, process_count=1)
  _assert_one_line(info.value, 'model.ghost_batch_size', 'a divisor of the')


def test_multi_point_span_past_the_end(digits_dir):
  config = _config(
    digits_dir,
    'averaging.multi_point_count',
    5,
    **{'averaging.multi_point_gap': 20},
  )
  with pytest.raises(ConfigError) as info:
    config_lib.validate(config, device_count=1, process_count=1)
  _assert_one_line(info.value, 'averaging.multi_point_gap', 'at most')


def test_probe_test_batches_past_the_test_split(digits_dir):
  # The digits' 360 test examples make one evaluation batch of 128 or more.
  config = _config(
    digits_dir,
    'probes.num_test_batches',
    2,
    **{'probes.steps': (5,), 'eval_batch_size': 360},
  )
  with pytest.raises(ConfigError) as info:
    config_lib.validate(config, device_count=1, process_count=1)
  _assert_one_line(info.value, 'probes.num_test_batches', 'allowed: 0 to 1')

  config.probes.num_test_batches = 1
  config_lib.validate(config, device_count=1, process_count=1)


def test_data_dir_without_the_dataset(tmp_path, digits_dir):
  empty = tmp_path / 'tfds'
  empty.mkdir()
  config = _config(
    digits_dir, 'data.name', 'cifar10', **{'data.data_dir': os.fspath(empty)}
  )
  config.batch_size = 64
  workdir = tmp_path / 'never'
  with pytest.raises(ConfigError) as info:
    trainer.train_and_evaluate(config, os.fspath(workdir))
  message = str(info.value)
  _assert_one_line(info.value, 'data.data_dir', "dataset 'cifar10'")
  assert f'{empty}/cifar10' in message  # the path searched
  assert f'tfds build cifar10 --data_dir={empty}' in message  # how to fix
  assert not workdir.exists()


def test_every_field_of_the_shipped_configs_is_known():
  names = sorted(
    f[: -len('.py')]
    for f in os.listdir('configs')
    if f.endswith('.py') and f != '__init__.py'
  )
  assert 'digits' in names
  for name in names:
    config_lib.check_fields(
      importlib.import_module(f'configs.{name}').get_config()
    )


def _main(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'sgd_quad.main', *flags],
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_unknown_override_and_missing_config_file(tmp_path):
  """Through the launcher: one `error:` line, exit 2, no workdir."""
  workdir = tmp_path / 'never'
  runs = {
    'config.foo: unknown field; allowed: init_seed': _main(
      '--config=configs/digits.py', f'--workdir={workdir}', '--config.foo=1'
    ),
    "--config: no config file at 'configs/nope.py'": _main(
      '--config=configs/nope.py', f'--workdir={workdir}'
    ),
  }
  for expected, run in runs.items():
    assert run.returncode == 2, run.stderr[-3000:]
    assert 'Traceback' not in run.stderr
    errors = [x for x in run.stderr.splitlines() if x.startswith('error:')]
    assert len(errors) == 1 and expected in errors[0], run.stderr[-3000:]
  assert not workdir.exists()
