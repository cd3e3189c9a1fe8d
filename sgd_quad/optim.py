"""Learning-rate schedules and the SGD optimizer, resolved from the config.

Schedules are optax schedules looked up by name in `SCHEDULES`; every one maps
the global step t (the number of updates already applied) to the learning rate
of update t + 1. The optimizer is optax SGD with heavy-ball or Nesterov
momentum and either coupled L2 weight decay (the gradient of
0.5 * wd * |w|^2 is added before momentum, as in the classic ResNet recipes) or
decoupled weight decay (added to the momentum direction, scaled by the LR).
"""

from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from sgd_quad.errors import ConfigError

Schedule = Callable[[int], float]


def load_lr_file(path: str, num_steps: int) -> np.ndarray:
  """Loads a per-step learning-rate array written by `sgd_quad.theory`.

  Args:
    path: a `.npy` file holding a 1-D float array whose entry i is the
      learning rate of global step i.
    num_steps: the step count the run trains to; the array must cover it.

  Returns:
    The array as float32.

  Raises:
    ConfigError: if the file is missing, malformed, too short or holds
      non-finite or negative values.
  """
  field = 'schedule.file'
  file = epath.Path(path)
  if not path or not file.exists():
    raise ConfigError(
      field,
      f'no .npy file at {path!r}; allowed: a 1-D .npy array of at least '
      f'num_steps ({num_steps}) learning rates',
    )
  with file.open('rb') as f:
    try:
      lrs = np.load(f)
    except ValueError as e:
      raise ConfigError(field, f'{path} is not a .npy array ({e})') from e
  if lrs.ndim != 1:
    raise ConfigError(field, f'{path} must be 1-D, got shape {lrs.shape}')
  if len(lrs) < num_steps:
    raise ConfigError(
      field,
      f'{path} holds {len(lrs)} learning rates but the run trains to step '
      f'{num_steps}; allowed: arrays of length >= num_steps',
    )
  if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
    raise ConfigError(field, f'{path} holds non-finite or negative values')
  return lrs.astype(np.float32)


def _constant(cfg, lr, num_steps) -> Schedule:
  del cfg, num_steps
  return optax.constant_schedule(lr)


def _cosine(cfg, lr, num_steps) -> Schedule:
  return optax.cosine_decay_schedule(lr, num_steps - cfg.warmup_steps)


def _linear(cfg, lr, num_steps) -> Schedule:
  return optax.linear_schedule(lr, 0.0, num_steps - cfg.warmup_steps)


def _piecewise(cfg, lr, num_steps) -> Schedule:
  del num_steps
  scales = {int(b) - cfg.warmup_steps: cfg.decay_factor for b in cfg.boundaries}
  return optax.piecewise_constant_schedule(lr, scales)


def _inverse_time(cfg, lr, num_steps) -> Schedule:
  """lr_t = lr / (1 + max(0, t - start) / decay_steps): 1/t decay from start."""
  del num_steps
  start = cfg.decay_start - cfg.warmup_steps

  def schedule(count):
    elapsed = jnp.maximum(count - start, 0).astype(jnp.float32)
    return lr / (1.0 + elapsed / cfg.decay_steps)

  return schedule


def _from_file(cfg, lr, num_steps) -> Schedule:
  del lr
  lrs = jnp.asarray(load_lr_file(cfg.file, num_steps))
  return lambda count: lrs[jnp.minimum(count, len(lrs) - 1)]


SCHEDULES = {
  'constant': _constant,
  'cosine': _cosine,
  'linear': _linear,
  'piecewise': _piecewise,
  'inverse_time': _inverse_time,
  'file': _from_file,
}


def create_schedule(
  cfg: ml_collections.ConfigDict, learning_rate: float, num_steps: int
) -> Schedule:
  """Builds the learning-rate schedule named by `cfg.name`.

  A linear warmup from 0 over `cfg.warmup_steps` steps precedes every schedule
  except `file`, whose array already holds every step's rate.

  Args:
    cfg: the `schedule` block of the config.
    learning_rate: the base (peak) learning rate.
    num_steps: total number of training steps.

  Returns:
    An optax schedule: step -> learning rate.
  """
  if cfg.name not in SCHEDULES:
    raise ConfigError(
      'schedule.name',
      f'unknown schedule {cfg.name!r}; allowed: {", ".join(SCHEDULES)}',
    )
  main = SCHEDULES[cfg.name](cfg, learning_rate, num_steps)
  if cfg.name == 'file' or cfg.warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, learning_rate, cfg.warmup_steps)
  return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def create_optimizer(
  cfg: ml_collections.ConfigDict, schedule: Schedule
) -> optax.GradientTransformation:
  """SGD with momentum and weight decay, as configured in `cfg.optimizer`.

  Args:
    cfg: the `optimizer` block of the config.
    schedule: the learning-rate schedule.

  Returns:
    The optax transformation.
  """
  momentum = cfg.momentum or None
  if not cfg.weight_decay:
    return optax.sgd(schedule, momentum, nesterov=cfg.nesterov)
  if cfg.decoupled_weight_decay:
    return optax.chain(
      optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov),
      optax.add_decayed_weights(cfg.weight_decay),
      optax.scale_by_learning_rate(schedule),
    )
  return optax.chain(
    optax.add_decayed_weights(cfg.weight_decay),
    optax.sgd(schedule, momentum, nesterov=cfg.nesterov),
  )
