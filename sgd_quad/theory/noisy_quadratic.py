"""A jitted Monte-Carlo simulator of SGD on the noisy-quadratic model.

Every direction i of the spectrum evolves independently: the iterate
x = theta - theta* (in the eigenbasis of H) takes SGD steps on a fresh batch
whose minimum xi ~ N(0, s_i^2), so the gradient is h_i (x - xi). The
simulator runs a (seeds, directions) array of such chains through
`lax.scan`, with any learning-rate schedule, optional momentum, and the
averaging rules of `sgd_quad.theory.rules` applied to the iterates as the
trainer applies them. Memory stays bounded: only per-direction second
moments (averaged over seeds) are recorded, every `record_every` steps, and
the snapshot rules keep rings of the iterates they need.
"""

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from sgd_quad.theory import _checks, closed_forms
from sgd_quad.theory import rules as rules_lib
from sgd_quad.theory.spectrum import Spectrum

PRNGKey = jax.Array
Schedule = float | ArrayLike | Callable[[jax.Array], jax.Array]

MOMENTUM_FORMS = ('heavy_ball', 'trace')


class Transition(NamedTuple):
  """Coefficients of one SGD step along a direction, for a batch minimum xi.

  x' = xx x + xm m + x_noise xi,   m' = mx x + mm m + m_noise xi, where m is
  the momentum buffer (velocity or gradient trace).
  """

  xx: jax.Array
  xm: jax.Array
  mx: jax.Array
  mm: jax.Array
  x_noise: jax.Array
  m_noise: jax.Array


def _check_form(form: str) -> None:
  if form not in MOMENTUM_FORMS:
    raise ValueError(
      f'momentum_form must be one of {", ".join(MOMENTUM_FORMS)}, got {form!r}'
    )


def transition(
  lr: ArrayLike, h: ArrayLike, momentum: ArrayLike, form: str = 'heavy_ball'
) -> Transition:
  """The linear map of one SGD step with momentum along one direction.

  'heavy_ball' (the paper's form): v <- mu v - lam h (x - xi); x <- x + v.
  'trace' (optax.sgd's form): m <- mu m + h (x - xi); x <- x - lam m.
  Both are plain SGD for mu = 0 and agree at a constant LR (v = -lam m);
  they differ when the LR changes, because 'trace' rescales the buffer.

  Args:
    lr: lam of this step (broadcasts with `h`).
    h: curvature.
    momentum: mu.
    form: 'heavy_ball' or 'trace'.

  Returns:
    A `Transition` with the broadcast shape of the arguments.
  """
  # TODO(sgd_quad): Nesterov momentum and weight decay, which the trainer
  # offers, are not modelled; both change the effective step.
  _check_form(form)
  lr = jnp.asarray(lr, dtype=float)
  h = jnp.asarray(h, dtype=float)
  mu = jnp.asarray(momentum, dtype=float)
  c = lr * h
  ones = jnp.ones_like(c)
  if form == 'heavy_ball':
    return Transition(1.0 - c, mu * ones, -c, mu * ones, c, c)
  return Transition(1.0 - c, -lr * mu * ones, h * ones, mu * ones, c, -h * ones)


def stationary_moments(
  spectrum: Spectrum, lr: float, momentum: float = 0.0, form: str = 'heavy_ball'
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Stationary (E[x^2], E[x m], E[m^2]) per direction at a constant LR.

  The heavy-ball covariance of `closed_forms.heavy_ball_stationary_covariance`;
  for the 'trace' form m = -v / lam.

  Args:
    spectrum: the model's spectrum, D directions.
    lr: lam > 0, stable on every direction.
    momentum: mu in [0, 1).
    form: 'heavy_ball' or 'trace'.

  Returns:
    Three (D,) arrays.
  """
  _check_form(form)
  cov = closed_forms.heavy_ball_stationary_covariance(
    lr, spectrum.h, spectrum.s2, momentum
  )
  if form == 'heavy_ball':
    return cov.xx, cov.xv, cov.vv
  return cov.xx, -cov.xv / lr, cov.vv / lr**2


class SimState(NamedTuple):
  """Chains of the simulator.

  Attributes:
    x: (S, D) iterates theta - theta* in the eigenbasis.
    buffer: (S, D) momentum buffers (velocity or gradient trace).
  """

  x: jax.Array
  buffer: jax.Array


def stationary_state(
  key: PRNGKey,
  spectrum: Spectrum,
  lr: float,
  num_seeds: int,
  momentum: float = 0.0,
  momentum_form: str = 'heavy_ball',
) -> SimState:
  """Samples chains from the exact stationary law of SGD at a constant LR.

  (x, m) is Gaussian with the covariance of `stationary_moments`.

  Args:
    key: PRNG key.
    spectrum: the model's spectrum, D directions.
    lr: lam > 0, stable on every direction.
    num_seeds: S >= 1.
    momentum: mu in [0, 1).
    momentum_form: 'heavy_ball' or 'trace'.

  Returns:
    A `SimState` of (S, D) arrays.
  """
  num_seeds = _checks.integer('num_seeds', num_seeds, 1)
  moments = stationary_moments(spectrum, lr, momentum, momentum_form)
  return _sample(key, *moments, num_seeds=num_seeds)


@functools.partial(jax.jit, static_argnames=('num_seeds',))
def _sample(key, xx, xm, mm, num_seeds):
  """Gaussian (x, m) with the given per-direction covariance, by Cholesky."""
  z = jax.random.normal(key, (2, num_seeds, xx.shape[0]))
  sx = jnp.sqrt(xx)
  slope = jnp.where(xx > 0, xm / jnp.where(xx > 0, sx, 1.0), 0.0)
  rest = jnp.sqrt(jnp.maximum(mm - slope**2, 0.0))
  return SimState(x=sx * z[0], buffer=slope * z[0] + rest * z[1])


class Moments(NamedTuple):
  """Recorded statistics of one trajectory (the iterate or an average).

  Attributes:
    second_moment: (R, D) mean over seeds of x_i^2 at each record.
    excess_loss: (R,) sum_i 0.5 h_i second_moment_i.
  """

  second_moment: np.ndarray
  excess_loss: np.ndarray


class Simulation(NamedTuple):
  """Result of `simulate`.

  Attributes:
    steps: (R,) step index of each record: 0, e, 2e, ..., T.
    iterate: `Moments` of the SGD iterate.
    averages: `Moments` of each averaging rule, in the order given.
    final: the chains after the last step.
  """

  steps: np.ndarray
  iterate: Moments
  averages: tuple[Moments, ...]
  final: SimState


# Averaging rules on (S, D) chains. A state has observed x_0 .. x_t; `read`
# gives the average at step t from it and x_t.


def _average_init(rule: rules_lib.AveragingRule, x0: jax.Array):
  if isinstance(rule, (rules_lib.EmaRule, rules_lib.SwaRule)):
    return x0
  size = (
    rule.num_snapshots if isinstance(rule, rules_lib.LawaRule) else rule.gap + 1
  )
  ring = jnp.zeros((size, *x0.shape), x0.dtype)
  return _average_update(rule, ring, x0, jnp.zeros([], jnp.int32))


def _average_update(rule, state, x, t):
  if isinstance(rule, (rules_lib.EmaRule, rules_lib.SwaRule)):
    return state + rules_lib.running_weight(rule, t).astype(x.dtype) * (
      x - state
    )
  offset = t - rule.start_step
  if isinstance(rule, rules_lib.LawaRule):
    store = (offset >= 0) & (offset % rule.period == 0)
    slot = (offset // rule.period) % rule.num_snapshots
  else:
    store = offset >= 0
    slot = offset % (rule.gap + 1)
  slot = jnp.where(store, slot, 0)
  kept = lax.dynamic_index_in_dim(state, slot, keepdims=False)
  return lax.dynamic_update_index_in_dim(
    state, jnp.where(store, x, kept), slot, 0
  )


def _average_read(rule, state, x, t):
  if isinstance(rule, (rules_lib.EmaRule, rules_lib.SwaRule)):
    return state
  offset = t - rule.start_step
  if isinstance(rule, rules_lib.LawaRule):
    count = jnp.minimum(offset // rule.period + 1, rule.num_snapshots)
    mask = jnp.arange(rule.num_snapshots) < count
    total = jnp.sum(jnp.where(mask[:, None, None], state, 0.0), axis=0)
    average = total / jnp.maximum(count, 1).astype(x.dtype)
  else:
    partner = jnp.maximum(offset - rule.gap, 0) % (rule.gap + 1)
    average = 0.5 * (x + lax.dynamic_index_in_dim(state, partner, 0, False))
  return jnp.where(offset >= 0, average, x)


@functools.partial(jax.jit, static_argnames=('rules', 'form', 'record_every'))
def _simulate(h, s2, lrs, x0, m0, key, momentum, rules, form, record_every):
  """Scans the chains; returns ((m2, loss) per trajectory, final x, m).

  Trajectory 0 is the iterate, then one per rule; m2 is (R, D), loss (R,).
  """
  noise_scale = jnp.sqrt(s2)

  def observe(x, states, t):
    averages = [
      _average_read(rule, state, x, t)
      for rule, state in zip(rules, states, strict=True)
    ]
    return tuple(jnp.mean(z**2, 0) for z in [x, *averages])

  def step(carry, inputs):
    x, m, states = carry
    t, lr = inputs  # t indexes the new iterate.
    xi = noise_scale * jax.random.normal(
      jax.random.fold_in(key, t), x.shape, x.dtype
    )
    f = transition(lr, h, momentum, form)
    x, m = (
      f.xx * x + f.xm * m + f.x_noise * xi,
      f.mx * x + f.mm * m + f.m_noise * xi,
    )
    states = tuple(
      _average_update(rule, state, x, t)
      for rule, state in zip(rules, states, strict=True)
    )
    return (x, m, states), None

  def chunk(carry, inputs):
    carry, _ = lax.scan(step, carry, inputs)
    return carry, observe(carry[0], carry[2], inputs[0][-1])

  states = tuple(_average_init(rule, x0) for rule in rules)
  first = observe(x0, states, jnp.zeros([], jnp.int32))
  num_steps = lrs.shape[0]
  steps = jnp.arange(1, num_steps + 1, dtype=jnp.int32)
  chunks = (
    steps.reshape(-1, record_every),
    lrs.reshape(-1, record_every),
  )
  (x, m, _), later = lax.scan(chunk, (x0, m0, states), chunks)
  second = [
    jnp.concatenate([a[None], b]) for a, b in zip(first, later, strict=True)
  ]
  return [(m2, 0.5 * m2 @ h) for m2 in second], x, m


def schedule_array(lr: Schedule, num_steps: int) -> jax.Array:
  """A learning-rate schedule as the (T,) array of per-update LRs.

  Entry t is the LR of the update from step t to step t + 1.

  Args:
    lr: a number, an array of length T, or a callable mapping the array of
      steps 0..T-1 to LRs (an optax schedule works).
    num_steps: T >= 1.

  Returns:
    A (T,) float array, all finite and >= 0.

  Raises:
    ValueError: wrong length, or negative or non-finite entries.
  """
  num_steps = _checks.integer('num_steps', num_steps, 1)
  if callable(lr):
    lr = lr(jnp.arange(num_steps))
  lrs = jnp.asarray(lr, dtype=float)
  if lrs.ndim == 0:
    lrs = jnp.full((num_steps,), lrs)
  if lrs.shape != (num_steps,):
    raise ValueError(
      f'lr must be a number, a callable or an array of length num_steps = '
      f'{num_steps}, got shape {lrs.shape}'
    )
  _checks.in_range('lr', lrs, 0.0)
  return lrs


def simulate(
  spectrum: Spectrum,
  lr: Schedule,
  num_steps: int,
  *,
  key: PRNGKey,
  num_seeds: int,
  momentum: float = 0.0,
  momentum_form: str = 'heavy_ball',
  averages: Sequence[rules_lib.AveragingRule] = (),
  init: str | SimState = 'stationary',
  init_lr: float | None = None,
  record_every: int = 1,
) -> Simulation:
  """Simulates SGD on the noisy-quadratic model, with averaged iterates.

  Per chain and direction, with xi_t ~ N(0, s^2) fresh at every step:

      plain SGD:   x_{t+1} = x_t - lam_t h (x_t - xi_t)
                           = (1 - alpha_t) x_t + alpha_t xi_t,
      momentum:    see `transition` ('heavy_ball' or 'trace' form).

  Each rule in `averages` is applied to x_0, x_1, ... as in
  `sgd_quad.theory.rules`. Chains with the same `key` see the same batch
  minima and start state, so two calls differing only in the schedule or the
  averaging rules use common random numbers.

  Args:
    spectrum: the model's spectrum, D directions.
    lr: the schedule; see `schedule_array`.
    num_steps: T, a multiple of `record_every`.
    key: PRNG key.
    num_seeds: S independent chains per direction.
    momentum: mu in [0, 1).
    momentum_form: 'heavy_ball' or 'trace'.
    averages: averaging rules to track.
    init: 'stationary' (exact stationary law at `init_lr`), 'zero' (start at
      theta*) or a `SimState` of (S, D) arrays.
    init_lr: the LR of the stationary start; default the schedule's first.
    record_every: e >= 1, steps between records.

  Returns:
    A `Simulation` with R = T / e + 1 records (step 0 included).

  Raises:
    ValueError: for bad arguments, each naming the argument.
  """
  _check_form(momentum_form)
  _checks.in_range('momentum', momentum, 0.0, 1.0, high_open=True)
  num_seeds = _checks.integer('num_seeds', num_seeds, 1)
  record_every = _checks.integer('record_every', record_every, 1)
  lrs = schedule_array(lr, num_steps)
  if num_steps % record_every:
    raise ValueError(
      f'num_steps must be a multiple of record_every = {record_every}, got '
      f'{num_steps}'
    )
  rules = tuple(rules_lib.check_rule(rule) for rule in averages)
  init_key, noise_key = jax.random.split(key)
  shape = (num_seeds, spectrum.h.shape[0])

  if isinstance(init, SimState):
    if init.x.shape != shape or init.buffer.shape != shape:
      raise ValueError(
        f'init must hold arrays of shape (num_seeds, D) = {shape}, got '
        f'{init.x.shape} and {init.buffer.shape}'
      )
    start = init
  elif init == 'zero':
    start = SimState(jnp.zeros(shape), jnp.zeros(shape))
  elif init == 'stationary':
    start_lr = float(lrs[0]) if init_lr is None else init_lr
    _checks.positive('init_lr', start_lr)
    _checks.stable_lr(start_lr, spectrum.h, momentum)
    start = stationary_state(
      init_key, spectrum, start_lr, num_seeds, momentum, momentum_form
    )
  else:
    raise ValueError(
      f"init must be 'stationary', 'zero' or a SimState, got {init!r}"
    )

  trajectories, x, m = _simulate(
    spectrum.h,
    spectrum.s2,
    lrs,
    jnp.asarray(start.x, dtype=float),
    jnp.asarray(start.buffer, dtype=float),
    noise_key,
    jnp.asarray(momentum, dtype=float),
    rules,
    momentum_form,
    record_every,
  )

  moments = [Moments(*map(np.asarray, pair)) for pair in trajectories]
  return Simulation(
    steps=np.arange(0, num_steps + 1, record_every),
    iterate=moments[0],
    averages=tuple(moments[1:]),
    final=SimState(x, m),
  )
