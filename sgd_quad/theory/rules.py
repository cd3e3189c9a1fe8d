"""Averaging rules as plain records, shared by the simulator and the solver.

The records mirror the trainer's averagers in `sgd_quad.averaging`, with the
steps counted from the start of a simulation (or from the branch point of a
matched schedule): an EMA that starts as a copy of the iterate at
`start_step`, SWA, LAWA and the two-point average. Before its start step
every average equals the current iterate. `make_rule` builds one from a name
and keyword parameters, for configs.
"""

import types
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from sgd_quad.theory import _checks


class EmaRule(NamedTuple):
  """EMA started as a copy of x_s: z <- beta z + (1 - beta) x_t.

  The update applies at steps t = s + c, s + 2c, ... (s = start_step,
  c = period); in between z is unchanged. As the trainer's default EMA.
  """

  # TODO(sgd_quad): the trainer's EMA warmup and debiasing options are not
  # modelled; with them the early average differs from this record's.

  decay: float
  start_step: int = 0
  period: int = 1


class SwaRule(NamedTuple):
  """Uniform mean of x_s, x_{s+c}, x_{s+2c}, ... up to the current step."""

  start_step: int = 0
  period: int = 1


class LawaRule(NamedTuple):
  """Mean of the latest m snapshots x_s, x_{s+c}, ... (fewer at first)."""

  num_snapshots: int
  period: int = 1
  start_step: int = 0


class TwoPointRule(NamedTuple):
  """Two-point average 0.5 (x_t + x_{max(t - k, s)}) for t >= s.

  The partner is clamped at the start step: for s <= t < s + k it is x_s, so
  the average moves smoothly from x_s to the stationary two-point average.
  (The trainer's `two_point` is defined only from s + k on, where the two
  agree.)
  """

  gap: int
  start_step: int = 0


AveragingRule = EmaRule | SwaRule | LawaRule | TwoPointRule

RULES: Mapping[str, type] = types.MappingProxyType(
  {
    'ema': EmaRule,
    'swa': SwaRule,
    'lawa': LawaRule,
    'two_point': TwoPointRule,
  }
)


def check_rule(rule: AveragingRule) -> AveragingRule:
  """Validates a rule's fields and returns it with int fields as ints.

  Args:
    rule: one of the rule records.

  Returns:
    The same rule, with `start_step`, `period`, `num_snapshots` and `gap`
    converted to Python ints (so the rule can be a static jit argument).

  Raises:
    ValueError: decay outside [0, 1), start_step < 0, period < 1,
      num_snapshots < 1, gap < 1, or an unknown record type.
  """
  if not isinstance(rule, (EmaRule, SwaRule, LawaRule, TwoPointRule)):
    raise ValueError(
      f'rule must be one of {", ".join(r.__name__ for r in RULES.values())},'
      f' got {type(rule).__name__}'
    )
  fields = {}
  if isinstance(rule, EmaRule):
    _checks.in_range('decay', rule.decay, 0.0, 1.0, high_open=True)
    fields['decay'] = float(rule.decay)
  if isinstance(rule, LawaRule):
    fields['num_snapshots'] = _checks.integer(
      'num_snapshots', rule.num_snapshots, 1
    )
  if isinstance(rule, TwoPointRule):
    fields['gap'] = _checks.integer('gap', rule.gap, 1)
  else:
    fields['period'] = _checks.integer('period', rule.period, 1)
  fields['start_step'] = _checks.integer('start_step', rule.start_step, 0)
  return rule._replace(**fields)


def make_rule(name: str, **params: Any) -> AveragingRule:
  """Builds an averaging rule from its registry name.

  Args:
    name: one of 'ema', 'swa', 'lawa', 'two_point'.
    **params: the record's fields, e.g. `make_rule('ema', decay=0.99)`.

  Returns:
    The validated rule record.

  Raises:
    ValueError: unknown name, unknown or missing parameters, or bad values.
  """
  if name not in RULES:
    raise ValueError(f'name must be one of {", ".join(RULES)}, got {name!r}')
  record = RULES[name]
  unknown = set(params) - set(record._fields)
  if unknown:
    raise ValueError(
      f'unknown parameters {sorted(unknown)} for rule {name!r}; allowed: '
      f'{", ".join(record._fields)}'
    )
  try:
    rule = record(**params)
  except TypeError as e:
    raise ValueError(f'rule {name!r}: {e}') from e
  return check_rule(rule)


def running_weight(
  rule: EmaRule | SwaRule, step: ArrayLike
) -> np.ndarray | jax.Array:
  """The weight r_t of the running form z_t = (1 - r_t) z_{t-1} + r_t x_t.

  EMA: r_t = 1 for t <= s (z follows x up to the copy at s), 1 - beta at
  t = s + c, s + 2c, ..., else 0. SWA: r_t = 1 for t <= s, 1 / n_t at
  t = s + (n_t - 1) c, else 0. With r_0 = 1 the form starts at z_0 = x_0.

  Args:
    rule: an `EmaRule` or `SwaRule`.
    step: step indices t >= 0 (any shape; NumPy, JAX or traced).

  Returns:
    r_t with the shape of `step` (float64 for NumPy input).
  """
  xp = _checks.namespace(step)
  offset = xp.asarray(step) - rule.start_step
  event = (offset > 0) & (offset % rule.period == 0)
  if isinstance(rule, EmaRule):
    weight = 1.0 - rule.decay
  else:
    weight = 1.0 / xp.maximum(offset // rule.period + 1, 1)
  return xp.where(offset <= 0, 1.0, xp.where(event, weight, 0.0))
