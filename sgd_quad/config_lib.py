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


def _one_of(cfg, field: str, allowed: Sequence[str]):
  value = _get(cfg, field)
  if value not in allowed:
    raise ConfigError(
      field, f'unknown value {value!r}; allowed: {", ".join(allowed)}'
    )


def _get(cfg, field: str):
  for part in field.split('.'):
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
  from sgd_quad import averaging, data, models, optim, trainer

  for field in ('num_steps', 'batch_size', 'eval_batch_size', 'log_every'):
    _positive(config, field, integer=True)
  for field in ('eval_every', 'checkpoint.every', 'checkpoint.keep'):
    _positive(config, field, integer=True)
  if config.checkpoint.keep < 2:
    raise ConfigError(
      'checkpoint.keep', f'got {config.checkpoint.keep}; allowed: >= 2'
    )
  if config.batch_size % device_count:
    raise ConfigError(
      'batch_size',
      f'{config.batch_size} is not divisible by the {device_count} devices; '
      'allowed: a multiple of the device count',
    )

  _one_of(config, 'model.name', tuple(models.MODELS))
  _one_of(config, 'model.dtype', COMPUTE_DTYPES)
  _non_negative(config, 'model.ghost_batch_size')
  ghost = config.model.ghost_batch_size
  if ghost and (config.batch_size // device_count) % ghost:
    raise ConfigError(
      'model.ghost_batch_size',
      f'{ghost} does not divide the per-device batch '
      f'{config.batch_size // device_count}; allowed: 0 (global batch '
      'statistics) or a divisor of the per-device batch',
    )
  if not 0.0 <= config.model.bn_momentum < 1.0:
    raise ConfigError('model.bn_momentum', 'allowed: a value in [0, 1)')

  _positive(config, 'optimizer.learning_rate')
  for field in ('momentum', 'weight_decay', 'label_smoothing'):
    _non_negative(config, f'optimizer.{field}')
  if config.optimizer.momentum >= 1.0:
    raise ConfigError('optimizer.momentum', 'allowed: a value in [0, 1)')
  if config.optimizer.label_smoothing >= 1.0:
    raise ConfigError('optimizer.label_smoothing', 'allowed: a value in [0, 1)')
  _validate_schedule(config)

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
  if config.schedule.name == 'file':
    optim.load_lr_file(config.schedule.file, config.num_steps)


def _validate_schedule(config):
  _one_of(
    config,
    'schedule.name',
    ('constant', 'cosine', 'linear', 'piecewise', 'inverse_time', 'file'),
  )
  sched = config.schedule
  _non_negative(config, 'schedule.warmup_steps')
  if sched.warmup_steps >= config.num_steps:
    raise ConfigError(
      'schedule.warmup_steps',
      f'{sched.warmup_steps} leaves no step after warmup; allowed: < '
      f'num_steps ({config.num_steps})',
    )
  if sched.name == 'inverse_time':
    _positive(config, 'schedule.decay_steps')
  if sched.name == 'piecewise':
    _positive(config, 'schedule.decay_factor')
    bounds = list(sched.boundaries)
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
