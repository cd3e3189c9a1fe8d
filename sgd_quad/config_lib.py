"""Config checks that run before anything is compiled or written.

`validate` walks the whole config and raises `ConfigError` (one line naming the
field and what is allowed) for the first bad value. Each block owns its checks:
the data, model, averaging and probe modules validate their own fields and this
module calls them, so a new feature extends validation where it lives.

`run_fields_changed` compares a resumed run's config with the one stored in its
workdir: fields that change the trajectory may not differ, apart from an
allow-list of fields that only change what is logged or how often.
"""

import hashlib
import json
import math
from collections.abc import Mapping, Sequence

import ml_collections

from sgd_quad.errors import ConfigError

# Fields a resumed run may change: they alter logging, I/O or performance but
# not the trajectory of parameters and averages.
RESUMABLE_FIELDS = (
  'log_every',
  'checkpoint.every',
  'checkpoint.keep',
  'data.data_dir',
  'data.num_workers',
  'data.prefetch',
  'eval_batch_size',
  'probes.figures',
)

COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')

# The fields a run config holds, per block ('' is the top level). The data,
# averaging and probes blocks list theirs in their modules' `default_config`.
# Any other field is refused: a misspelt name would be silently ignored.
_FIELDS = {
  '': (
    'init_seed',
    'data_seed',
    'data',
    'model',
    'optimizer',
    'schedule',
    'batch_size',
    'eval_batch_size',
    'num_steps',
    'log_every',
    'eval_every',
    'checkpoint',
    'averaging',
    'probes',
    'init_from',
    'init_from_step',
    'init_from_opt_state',
  ),
  'model': ('name', 'dtype', 'bn_momentum', 'ghost_batch_size'),
  'optimizer': (
    'learning_rate',
    'momentum',
    'nesterov',
    'weight_decay',
    'decoupled_weight_decay',
    'label_smoothing',
  ),
  'schedule': (
    'name',
    'warmup_steps',
    'boundaries',
    'decay_factor',
    'decay_start',
    'decay_steps',
    'file',
  ),
  'checkpoint': ('every', 'keep'),
}


# Top-level blocks a config may leave out: an experiment's settings
# (`sgd_quad.experiments`), which the trainer ignores.
_OPTIONAL_BLOCKS = ('experiment',)


def known_fields() -> dict[str, tuple[str, ...]]:
  """Block name ('' for the top level) -> the names of its fields."""
  from sgd_quad import averaging, data, experiments, probing

  blocks = {
    'data': data,
    'averaging': averaging,
    'probes': probing,
    'experiment': experiments,
  }
  return {
    **_FIELDS,
    '': _FIELDS[''] + _OPTIONAL_BLOCKS,
    **{name: tuple(m.default_config().keys()) for name, m in blocks.items()},
  }


def check_field_name(path: str):
  """Raises `ConfigError` unless `path` (e.g. 'optimizer.momentum') is a field.

  Args:
    path: a dotted field name, as in `--config.<path>=...`.

  Raises:
    ConfigError: naming the first unknown part and the allowed names there.
  """
  known = known_fields()
  block = ''
  for part in path.split('.'):
    name = f'{block}.{part}' if block else part
    if block not in known:
      raise ConfigError(name, f'unknown field; {block} has no sub-fields')
    if part not in known[block]:
      where = f' in {block}' if block else ''
      raise ConfigError(
        name, f'unknown field; allowed{where}: {", ".join(known[block])}'
      )
    block = name


def check_fields(config: ml_collections.ConfigDict):
  """Refuses unknown fields (a typo in a config file) and missing ones.

  Args:
    config: the full run config.

  Raises:
    ConfigError: naming the first unknown or missing field.
  """
  known = known_fields()
  pending = [('', config)]
  while pending:
    block, node = pending.pop()
    for key, value in node.items():
      name = f'{block}.{key}' if block else key
      check_field_name(name)
      if isinstance(value, ml_collections.ConfigDict):
        pending.append((name, value))
    for key in known.get(block, ()):
      if key not in node and not (block == '' and key in _OPTIONAL_BLOCKS):
        name = f'{block}.{key}' if block else key
        raise ConfigError(
          name,
          'missing field; start from a config in configs/, which sets every '
          'field',
        )


def _positive(cfg, field: str, *, integer: bool = False):
  value = _get(cfg, field)
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind):
    allowed = 'a positive integer' if integer else 'a positive number'
    raise ConfigError(field, f'got {value!r}; allowed: {allowed}')
  if not math.isfinite(value) or value <= 0:
    allowed = 'a positive integer' if integer else 'a positive number'
    raise ConfigError(field, f'got {value!r}; allowed: {allowed}')


def _non_negative(cfg, field: str):
  value = _get(cfg, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(field, f'got {value!r}; allowed: a number >= 0')
  if not math.isfinite(value) or value < 0:
    raise ConfigError(field, f'got {value!r}; allowed: a number >= 0')


def _integer(cfg, field: str, low: int, high: int | None = None):
  """Requires an integer in [low, high) (no upper bound when high is None)."""
  value = _get(cfg, field)
  allowed = f'an integer >= {low}'
  if high is not None:
    allowed = f'an integer in [{low}, {high})'
  if (
    isinstance(value, bool)
    or not isinstance(value, int)
    or value < low
    or (high is not None and value >= high)
  ):
    raise ConfigError(field, f'got {value!r}; allowed: {allowed}')


def _unit_interval(cfg, field: str):
  """Requires a number in [0, 1), as for a decay or a momentum."""
  value = _get(cfg, field)
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, float))
    or not 0.0 <= value < 1.0
  ):
    raise ConfigError(field, f'got {value!r}; allowed: a number in [0, 1)')


def _of_type(cfg, field: str, kind: type, allowed: str):
  value = _get(cfg, field)
  if not isinstance(value, kind):
    raise ConfigError(field, f'got {value!r}; allowed: {allowed}')


def _one_of(cfg, field: str, allowed: Sequence[str]):
  value = _get(cfg, field)
  if value not in allowed:
    raise ConfigError(
      field, f'unknown value {value!r}; allowed: {", ".join(allowed)}'
    )


def _get(cfg, field: str):
  for part in field.split('.'):
    if part not in cfg:
      raise ConfigError(field, 'missing field')
    cfg = cfg[part]
  return cfg


def validate(
  config: ml_collections.ConfigDict, *, device_count: int, process_count: int
):
  """Checks every field of a run's config.

  Args:
    config: the full run config.
    device_count: number of devices in the global mesh.
    process_count: number of JAX processes.

  Raises:
    ConfigError: naming the first bad field and the allowed values.
  """
  # Imported here: these modules import this one for their own checks.
  from sgd_quad import averaging, data, models, optim, probing, trainer

  check_fields(config)
  for field in ('num_steps', 'batch_size', 'eval_batch_size', 'log_every'):
    _positive(config, field, integer=True)
  for field in ('eval_every', 'checkpoint.every'):
    _positive(config, field, integer=True)
  _integer(config, 'checkpoint.keep', 2)
  _integer(config, 'init_seed', 0)
  _integer(config, 'data_seed', 0)
  if config.batch_size % device_count:
    raise ConfigError(
      'batch_size',
      f'{config.batch_size} is not divisible by the {device_count} devices; '
      'allowed: a multiple of the device count',
    )

  _one_of(config, 'model.name', tuple(models.MODELS))
  _one_of(config, 'model.dtype', COMPUTE_DTYPES)
  _integer(config, 'model.ghost_batch_size', 0)
  ghost = config.model.ghost_batch_size
  if ghost and (config.batch_size // device_count) % ghost:
    raise ConfigError(
      'model.ghost_batch_size',
      f'{ghost} does not divide the per-device batch '
      f'{config.batch_size // device_count}; allowed: 0 (global batch '
      'statistics) or a divisor of the per-device batch',
    )
  _unit_interval(config, 'model.bn_momentum')

  _positive(config, 'optimizer.learning_rate')
  _non_negative(config, 'optimizer.weight_decay')
  _unit_interval(config, 'optimizer.momentum')
  _unit_interval(config, 'optimizer.label_smoothing')
  for field in ('nesterov', 'decoupled_weight_decay'):
    _of_type(config, f'optimizer.{field}', bool, 'True or False')
  _validate_schedule(config)

  _of_type(config, 'init_from', str, 'a workdir path, or empty')
  _integer(config, 'init_from_step', -1)
  _one_of(config, 'init_from_opt_state', ('keep', 'reset'))
  data.validate(
    config.data,
    global_batch_size=config.batch_size,
    process_count=process_count,
  )
  eval_steps = trainer.eval_steps(config)
  averaging.validate(
    config.averaging, num_steps=config.num_steps, eval_steps=eval_steps
  )
  probing.validate(config.probes, num_steps=config.num_steps)
  if probing.probe_steps(config.probes, config.num_steps):
    _check_probe_test_batches(config, data.DATASETS[config.data.name])
  if config.schedule.name == 'file':
    optim.load_lr_file(config.schedule.file, config.num_steps)
  if 'experiment' in config:
    from sgd_quad import experiments

    experiments.validate(config.experiment, config)


def _check_probe_test_batches(config, spec):
  """The fixed test batches of the probes must exist in the test split."""
  wanted = config.probes.num_test_batches
  available = -(-spec.num_test // min(config.eval_batch_size, spec.num_test))
  if wanted > available:
    raise ConfigError(
      'probes.num_test_batches',
      f'{wanted} test batches of {config.eval_batch_size} examples do not '
      f'fit in the {spec.num_test} test examples of {config.data.name}; '
      f'allowed: 0 to {available}',
    )


def _validate_schedule(config):
  _one_of(
    config,
    'schedule.name',
    ('constant', 'cosine', 'linear', 'piecewise', 'inverse_time', 'file'),
  )
  sched = config.schedule
  _integer(config, 'schedule.warmup_steps', 0)
  if sched.warmup_steps >= config.num_steps:
    raise ConfigError(
      'schedule.warmup_steps',
      f'{sched.warmup_steps} leaves no step after warmup; allowed: < '
      f'num_steps ({config.num_steps})',
    )
  # Checked whatever the schedule, so a bad value never waits for the day
  # the schedule changes.
  _positive(config, 'schedule.decay_steps')
  _positive(config, 'schedule.decay_factor')
  _integer(config, 'schedule.decay_start', 0, config.num_steps)
  _of_type(config, 'schedule.file', str, 'a .npy path, or empty')
  bounds = sched.boundaries
  if not isinstance(bounds, (tuple, list)) or not all(
    isinstance(b, int) and not isinstance(b, bool) for b in bounds
  ):
    raise ConfigError(
      'schedule.boundaries', f'got {bounds!r}; allowed: a tuple of integers'
    )
  if sched.name == 'piecewise':
    bounds = list(bounds)
    if bounds != sorted(bounds) or any(
      b <= sched.warmup_steps or b >= config.num_steps for b in bounds
    ):
      raise ConfigError(
        'schedule.boundaries',
        f'got {tuple(bounds)}; allowed: increasing steps after warmup and '
        f'before num_steps ({config.num_steps})',
      )


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON-compatible data (tuples become lists)."""
  return json.loads(config.to_json())


def config_hash(config: ml_collections.ConfigDict) -> str:
  """A short stable hash of the config, compared across processes."""
  text = json.dumps(to_dict(config), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(tree: Mapping, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def run_fields_changed(stored: Mapping, current: Mapping) -> list[str]:
  """Names the fields that differ between two configs and change the run.

  Args:
    stored: the config a workdir was started with (plain dict).
    current: the config of the launch that wants to resume it (plain dict).

  Returns:
    Sorted dotted names of differing fields, minus `RESUMABLE_FIELDS`.
  """
  old, new = _flatten(stored), _flatten(current)
  changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
  return sorted(changed - set(RESUMABLE_FIELDS))
