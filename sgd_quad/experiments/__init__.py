"""The paper's branch experiments, and the `experiment` block of their configs.

Every experiment starts from one base run trained at a constant learning
rate to a branch step t0 and compares branches started from its checkpoint
there: the equivalence of averaging and an LR schedule (`equivalence`, E6 and
E7), the accuracy of two-point averages against their gap (`two_point_gains`,
E8), the averaging gain at a constant LR and after a decay (`schedule_gain`,
E9) and the distance between two trajectories (`distances`, E4). `estimate`
turns the probes at t0 into a spectrum of the noisy-quadratic model, and
`seeds` repeats any of them over seeds and reports mean and standard
deviation. Each module runs as
`python -m sgd_quad.experiments.<name> --config=... --workdir=...`.

An experiment's config is a run config (the base run's) plus the block below,
which `config_lib.validate` checks through `validate`; the trainer ignores it.
This module imports nothing heavy, so the config checks can load it.
"""

import math

import ml_collections

from sgd_quad.errors import ConfigError

# The experiments `seeds` can repeat, by the name in `experiment.name`.
NAMES = ('equivalence', 'two_point_gains', 'schedule_gain', 'distances')
SPECTRA = ('single_direction',)
DECAYS = ('cosine', 'linear')


def default_config() -> ml_collections.ConfigDict:
  """The `experiment` block; each experiment reads the fields it names.

  Returns:
    A ConfigDict with fields
      name: the experiment `seeds` repeats, one of NAMES.
      base_workdir: a trained run to branch from; '' trains one in
        <workdir>/base from the config (averaging and probes off).
      branch_step: t0, the step the branches start from.
      branch_steps: T, steps every branch trains after t0.
      eval_every: evaluation interval of the branches.
      seeds: `seeds` runs seed s with init_seed = data_seed = s.
      match: equivalence: averaged models that get a matched branch B, by
        name (e.g. 'ema_0.99'); () matches every modelled one.
      spectrum: estimate: how probes become a spectrum, one of SPECTRA.
      estimate_batches: estimate: training batches for the curvature along
        the gradient and the gradient-noise trace.
      hessian_iters: estimate: Lanczos iterations for the top eigenvalue
        (0: not measured, NaN; it is a check, not used by the spectrum).
      two_point_gaps: two_point_gains: the gaps k tracked in one branch.
      lr_factor: two_point_gains: LR of the comparison branch, as a factor.
      decay: schedule_gain: the decayed branch's schedule, one of DECAYS.
      distance_every: distances: steps between distance measurements.
      distance_lr_factors: distances: LR factors of the branch pairs.
      perturbation: distances: relative size of a Gaussian kick given to the
        second branch's weights (0: none, so same-order pairs coincide).
  """
  return ml_collections.ConfigDict(
    {
      'name': 'equivalence',
      'base_workdir': '',
      'branch_step': 1000,
      'branch_steps': 1000,
      'eval_every': 50,
      'seeds': (0, 1, 2, 3, 4),
      'match': (),
      'spectrum': 'single_direction',
      'estimate_batches': 8,
      'hessian_iters': 20,
      'two_point_gaps': (25, 50, 100, 200, 400),
      'lr_factor': 0.5,
      'decay': 'cosine',
      'distance_every': 10,
      'distance_lr_factors': (1.0,),
      'perturbation': 0.0,
    }
  )


def _int(cfg, field: str, minimum: int) -> None:
  value = cfg[field]
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(
      f'experiment.{field}', f'got {value!r}; allowed: an integer >= {minimum}'
    )


def _ints(cfg, field: str, minimum: int) -> None:
  values = cfg[field]
  if not isinstance(values, (tuple, list)) or not all(
    isinstance(v, int) and not isinstance(v, bool) and v >= minimum
    for v in values
  ):
    raise ConfigError(
      f'experiment.{field}',
      f'got {values!r}; allowed: a tuple of integers >= {minimum}',
    )


def _positive(value) -> bool:
  return (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
    and value > 0
  )


def validate(
  cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> None:
  """Checks the `experiment` block against the run config around it.

  Args:
    cfg: the block (`config.experiment`).
    config: the whole config (the base run's fields).

  Raises:
    ConfigError: naming the first bad field and what is allowed.
  """
  unknown = set(cfg.keys()) - set(default_config().keys())
  if unknown:
    raise ConfigError(
      f'experiment.{sorted(unknown)[0]}',
      f'unknown field; allowed: {", ".join(default_config().keys())}',
    )
  for field, allowed in (
    ('name', NAMES),
    ('spectrum', SPECTRA),
    ('decay', DECAYS),
  ):
    if cfg[field] not in allowed:
      raise ConfigError(
        f'experiment.{field}',
        f'unknown value {cfg[field]!r}; allowed: {", ".join(allowed)}',
      )
  if not isinstance(cfg.base_workdir, str):
    raise ConfigError(
      'experiment.base_workdir',
      f'got {cfg.base_workdir!r}; allowed: a workdir path, or empty',
    )
  for field, minimum in (
    ('branch_step', 1),
    ('branch_steps', 1),
    ('eval_every', 1),
    ('estimate_batches', 2),
    ('hessian_iters', 0),
    ('distance_every', 1),
  ):
    _int(cfg, field, minimum)
  _ints(cfg, 'seeds', 0)
  _ints(cfg, 'two_point_gaps', 1)
  if len(set(cfg.seeds)) != len(cfg.seeds) or not cfg.seeds:
    raise ConfigError(
      'experiment.seeds',
      f'got {tuple(cfg.seeds)!r}; allowed: distinct seeds, at least one',
    )
  if not isinstance(cfg.match, (tuple, list)) or not all(
    isinstance(m, str) for m in cfg.match
  ):
    raise ConfigError(
      'experiment.match',
      f'got {cfg.match!r}; allowed: a tuple of averaged-model names',
    )
  if not _positive(cfg.lr_factor):
    raise ConfigError(
      'experiment.lr_factor', f'got {cfg.lr_factor!r}; allowed: a number > 0'
    )
  factors = cfg.distance_lr_factors
  if not isinstance(factors, (tuple, list)) or not all(
    _positive(f) for f in factors
  ):
    raise ConfigError(
      'experiment.distance_lr_factors',
      f'got {factors!r}; allowed: a tuple of numbers > 0',
    )
  value = cfg.perturbation
  if not (_positive(value) or value == 0) or isinstance(value, bool):
    raise ConfigError(
      'experiment.perturbation', f'got {value!r}; allowed: a number >= 0'
    )

  # The branches continue the base run at a constant LR: its schedule must
  # not depend on num_steps, and t0 must lie after the warmup.
  if config.schedule.name != 'constant':
    raise ConfigError(
      'schedule.name',
      f'an experiment branches from a constant-LR base run, got '
      f'{config.schedule.name!r}; allowed: constant',
    )
  if cfg.branch_step <= config.schedule.warmup_steps:
    raise ConfigError(
      'experiment.branch_step',
      f'{cfg.branch_step} is inside the warmup; allowed: > '
      f'schedule.warmup_steps ({config.schedule.warmup_steps})',
    )
