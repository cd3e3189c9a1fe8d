"""Averaging as a learning-rate schedule: exact moments and a matching solver.

From a branch point where SGD is stationary at the base LR lam, branch (A)
keeps lam and averages the iterates; branch (B) does not average and follows
a schedule lam_t. Per direction the averaged iterate is a linear function of
the iterates, so its variance follows from deterministic second-moment
recursions (no Monte Carlo): EMA and SWA through the joint covariance of
(x, m, z), two-point and LAWA averages through the stationary
autocovariance. `match_schedule` then picks, step by step, the one scalar
lam_t that makes B's expected excess loss sum_i 0.5 h_i v_i(t) equal A's,
and `write_schedule` stores it as the per-step `.npy` array the trainer
reads.
"""

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from sgd_quad.theory import _checks
from sgd_quad.theory import noisy_quadratic as nq
from sgd_quad.theory import rules as rules_lib
from sgd_quad.theory.spectrum import Spectrum


def _check_base(
  spectrum: Spectrum, lr: float, num_steps: int, momentum: float, form: str
) -> int:
  _checks.positive('lr', lr)
  _checks.in_range('momentum', momentum, 0.0, 1.0, high_open=True)
  _checks.stable_lr(lr, spectrum.h, momentum)
  if form not in nq.MOMENTUM_FORMS:
    raise ValueError(
      f'momentum_form must be one of {", ".join(nq.MOMENTUM_FORMS)}, got '
      f'{form!r}'
    )
  return _checks.integer('num_steps', num_steps, 1)


def _matrix(f: nq.Transition) -> tuple[jax.Array, jax.Array]:
  """(A, b) of u' = A u + b xi for u = (x, m): shapes (..., 2, 2), (..., 2)."""
  a = jnp.stack([jnp.stack([f.xx, f.xm], -1), jnp.stack([f.mx, f.mm], -1)], -2)
  return a, jnp.stack([f.x_noise, f.m_noise], -1)


def _propagate(p: jax.Array, a: jax.Array, b: jax.Array, s2: jax.Array):
  """P' = A P A^T + s^2 b b^T, batched over leading axes."""
  return jnp.einsum('...ij,...jk,...lk->...il', a, p, a) + s2[
    ..., None, None
  ] * (b[..., :, None] * b[..., None, :])


def _stationary_matrix(spectrum, lr, momentum, form) -> jax.Array:
  xx, xm, mm = nq.stationary_moments(spectrum, lr, momentum, form)
  return jnp.stack([jnp.stack([xx, xm], -1), jnp.stack([xm, mm], -1)], -2)


@functools.partial(jax.jit, static_argnames=('form', 'reduce'))
def _running_average_variance(h, s2, lr, momentum, weights, form, reduce):
  """Var(z_t), t = 0..T, for z_t = (1 - r_t) z_{t-1} + r_t x_t, z_0 = x_0.

  With `reduce`, the excess loss sum_i 0.5 h_i Var_i(z_t) instead.
  """

  def out(var):
    return 0.5 * jnp.sum(h * var, -1) if reduce else var

  spectrum = Spectrum(h, s2)
  p = _stationary_matrix(spectrum, lr, momentum, form)
  a, b = _matrix(nq.transition(lr, h, momentum, form))
  # Joint covariance of (x, m, z), starting with z = x.
  p3 = jnp.zeros((h.shape[0], 3, 3))
  p3 = p3.at[:, :2, :2].set(p)
  p3 = p3.at[:, 2, :2].set(p[:, 0]).at[:, :2, 2].set(p[:, 0])
  p3 = p3.at[:, 2, 2].set(p[:, 0, 0])

  def step(p3, r):
    top = jnp.concatenate([a, jnp.zeros((h.shape[0], 2, 1))], -1)
    bottom = jnp.concatenate(
      [r * a[:, :1, :], jnp.full((h.shape[0], 1, 1), 1.0 - r)], -1
    )
    m = jnp.concatenate([top, bottom], -2)
    noise = jnp.concatenate([b, r * b[:, :1]], -1)
    p3 = _propagate(p3, m, noise, s2)
    return p3, out(p3[:, 2, 2])

  _, var = lax.scan(step, p3, weights)
  return jnp.concatenate([out(p[:, 0, 0])[None], var])


@functools.partial(jax.jit, static_argnames=('max_lag', 'form'))
def _autocovariance(h, s2, lr, momentum, max_lag, form):
  """Stationary Cov(x_t, x_{t+d}) = (A^d P)_00 for d = 0..max_lag: (L, D)."""
  p = _stationary_matrix(Spectrum(h, s2), lr, momentum, form)
  a, _ = _matrix(nq.transition(lr, h, momentum, form))
  row = jnp.stack([jnp.ones_like(h), jnp.zeros_like(h)], -1)

  def step(row, _):
    return jnp.einsum('di,dij->dj', row, a), jnp.sum(row * p[:, :, 0], -1)

  _, cov = lax.scan(step, row, None, length=max_lag + 1)
  return cov


def _averaged(rule, spectrum, lr, num_steps, momentum, momentum_form, reduce):
  """Variances (T + 1, D) of `averaged_variance`, or with `reduce` the loss."""
  num_steps = _check_base(spectrum, lr, num_steps, momentum, momentum_form)
  rule = rules_lib.check_rule(rule)
  h, s2 = spectrum.h, spectrum.s2
  mu = jnp.asarray(momentum, dtype=float)
  lr_arr = jnp.asarray(lr, dtype=float)
  steps = np.arange(num_steps + 1)
  offset = steps - rule.start_step

  if isinstance(rule, (rules_lib.EmaRule, rules_lib.SwaRule)):
    weights = rules_lib.running_weight(rule, steps[1:])
    return np.asarray(
      _running_average_variance(
        h, s2, lr_arr, mu, weights, momentum_form, reduce
      )
    )

  if isinstance(rule, rules_lib.TwoPointRule):
    lags = np.clip(offset, 0, rule.gap)
    cov = _autocovariance(h, s2, lr_arr, mu, int(lags.max()), momentum_form)
    table = 0.5 * (cov[0] + np.asarray(cov))
    return (0.5 * table @ h if reduce else table)[lags]

  m, c = rule.num_snapshots, rule.period
  counts = np.where(offset < 0, 1, np.minimum(offset // c + 1, m))
  n_max = int(counts.max())
  cov = _autocovariance(h, s2, lr_arr, mu, c * (n_max - 1), momentum_form)
  lagged = np.asarray(cov)[::c]  # C(c d), d = 0..n_max-1.
  n = np.arange(1, n_max + 1)
  pairs = np.clip(n[:, None] - np.arange(1, n_max)[None, :], 0, None)
  table = (n[:, None] * lagged[0] + 2.0 * pairs @ lagged[1:]) / n[:, None] ** 2
  return (0.5 * table @ h if reduce else table)[counts - 1]


def averaged_variance(
  rule: rules_lib.AveragingRule,
  spectrum: Spectrum,
  lr: float,
  num_steps: int,
  *,
  momentum: float = 0.0,
  momentum_form: str = 'heavy_ball',
) -> np.ndarray:
  """Exact variance of an averaged iterate after a stationary branch point.

  SGD runs at the constant lam from the stationary state at step 0; the rule
  (steps counted from the branch) averages x_0, x_1, .... With u = (x, m)
  evolving as u' = A u + b xi and P its stationary covariance:

  - EMA, SWA: z_t = (1 - r_t) z_{t-1} + r_t x_t (`rules.running_weight`), so
    (x, m, z) is linear with noise and its 3x3 covariance obeys
    P3' = M_t P3 M_t^T + s^2 c_t c_t^T exactly.
  - two-point: Var = 0.5 (C(0) + C(d_t)), C(d) = (A^d P)_00 the stationary
    autocovariance ((1 - alpha)^d Var_inf without momentum),
    d_t = min(max(t - s, 0), k).
  - LAWA with n snapshots c apart: Var = (1 / n^2) [n C(0)
    + 2 sum_{d=1}^{n-1} (n - d) C(c d)].

  Args:
    rule: the averaging rule.
    spectrum: the model's spectrum, D directions.
    lr: lam > 0, stable on every direction.
    num_steps: T >= 1.
    momentum: mu in [0, 1).
    momentum_form: 'heavy_ball' or 'trace' (see `noisy_quadratic`).

  Returns:
    (T + 1, D) NumPy array of variances at branch steps 0..T.
  """
  return _averaged(
    rule, spectrum, lr, num_steps, momentum, momentum_form, reduce=False
  )


def averaged_excess_loss(
  rule: rules_lib.AveragingRule,
  spectrum: Spectrum,
  lr: float,
  num_steps: int,
  *,
  momentum: float = 0.0,
  momentum_form: str = 'heavy_ball',
) -> np.ndarray:
  """Expected excess full-batch loss of an averaged iterate, exactly.

  sum_i 0.5 h_i Var_i(t) with Var from `averaged_variance`.

  Args:
    rule: the averaging rule.
    spectrum: the model's spectrum.
    lr: lam > 0.
    num_steps: T >= 1.
    momentum: mu in [0, 1).
    momentum_form: 'heavy_ball' or 'trace'.

  Returns:
    (T + 1,) NumPy array of losses at branch steps 0..T.
  """
  return _averaged(
    rule, spectrum, lr, num_steps, momentum, momentum_form, reduce=True
  )


@functools.partial(jax.jit, static_argnames=('form',))
def _schedule_loss(h, s2, base_lr, momentum, lrs, form):
  p = _stationary_matrix(Spectrum(h, s2), base_lr, momentum, form)

  def step(p, lr):
    a, b = _matrix(nq.transition(lr, h, momentum, form))
    p = _propagate(p, a, b, s2)
    return p, 0.5 * jnp.sum(h * p[:, 0, 0])

  _, loss = lax.scan(step, p, lrs)
  return jnp.concatenate([0.5 * jnp.sum(h * p[:, 0, 0])[None], loss])


def schedule_excess_loss(
  spectrum: Spectrum,
  learning_rates: ArrayLike,
  *,
  base_lr: float,
  momentum: float = 0.0,
  momentum_form: str = 'heavy_ball',
) -> np.ndarray:
  """Expected excess loss of plain (unaveraged) SGD under a schedule.

  From the stationary state at `base_lr`, per direction and exactly:
  v_{t+1} = (1 - lam_t h)^2 v_t + lam_t^2 h^2 s^2 without momentum, the
  2x2 covariance recursion of (x, m) with it.

  Args:
    spectrum: the model's spectrum.
    learning_rates: (T,) LRs of the updates from branch step t to t + 1.
    base_lr: lam > 0 of the stationary start.
    momentum: mu in [0, 1).
    momentum_form: 'heavy_ball' or 'trace'.

  Returns:
    (T + 1,) NumPy array of losses at branch steps 0..T.
  """
  lrs = np.asarray(learning_rates, dtype=np.float64)
  if lrs.ndim != 1:
    raise ValueError(f'learning_rates must be 1-D, got shape {lrs.shape}')
  _check_base(spectrum, base_lr, lrs.shape[0], momentum, momentum_form)
  _checks.in_range('learning_rates', lrs, 0.0)
  loss = _schedule_loss(
    spectrum.h,
    spectrum.s2,
    jnp.asarray(base_lr, dtype=float),
    jnp.asarray(momentum, dtype=float),
    lrs,
    momentum_form,
  )
  return np.asarray(loss)


class MatchedSchedule(NamedTuple):
  """Result of `match_schedule`.

  Attributes:
    learning_rates: (T,) lam_t, the LR of the update from branch step t to
      t + 1.
    target_loss: (T + 1,) expected excess loss of the averaged iterate.
    matched_loss: (T + 1,) expected excess loss of SGD under the schedule.
    clipped: (T,) True where no lam_t >= 0 reached the target (n steps
      ahead, see `match_schedule`); lam_t is then the LR minimising that
      loss, or 0 where the root was negative.
  """

  learning_rates: np.ndarray
  target_loss: np.ndarray
  matched_loss: np.ndarray
  clipped: np.ndarray


def _loss(h: jax.Array, p: jax.Array) -> jax.Array:
  return 0.5 * jnp.sum(h * p[..., 0, 0], axis=-1)


def _nearest_root(a, b, c, lr):
  """Root u of a u^2 + b u + c nearest 0 that keeps lr + u >= 0 (scalars).

  Returns (u, reached); reached is False where no root keeps the LR
  non-negative, and u is then the vertex (or a unit step downhill if
  a <= 0): the LR that brings the loss closest to the target.
  """
  disc = b**2 - 4.0 * a * c
  real = disc >= 0
  # The roots c / q and q / a, q = -(b + sign(b) sqrt(disc)) / 2; c / q stays
  # accurate when a is tiny.
  sign = jnp.where(b >= 0, 1.0, -1.0)
  q = -0.5 * (b + sign * jnp.sqrt(jnp.maximum(disc, 0.0)))
  roots = jnp.stack(
    [
      jnp.where(q != 0, c / jnp.where(q != 0, q, 1.0), jnp.inf),
      jnp.where(a != 0, q / jnp.where(a != 0, a, 1.0), jnp.inf),
    ]
  )
  # Below the target at a small LR the nearer root is often negative: the
  # loss first falls with the LR (contraction), then rises (noise).
  usable = real & jnp.isfinite(roots) & (lr + roots >= 0)
  distance = jnp.where(usable, jnp.abs(roots), jnp.inf)
  root = roots[jnp.argmin(distance)]
  reached = jnp.any(usable)
  vertex = jnp.where(a > 0, -b / jnp.where(a > 0, 2.0 * a, 1.0), -sign)
  return jnp.where(reached, root, vertex), reached


@functools.partial(jax.jit, static_argnames=('form', 'horizon'))
def _solve(h, s2, base_lr, momentum, targets, form, horizon):
  """Per-step LRs matching targets[t + n], n = min(horizon, T - t) ahead.

  At each step g(l), the loss n steps ahead at a constant LR l, is expanded
  to second order around the current l and the root nearest l is taken,
  starting from the previous LR. For horizon = 1, g is exactly quadratic:
  with the x row of the step A_x(l) = e0 - l e1 and noise gain l h,
  g(l) = sum_i 0.5 h_i [e0 P e0 - 2 l e1 P e0 + l^2 (e1 P e1 + h_i^2 s_i^2)],
  solved in one round. Otherwise the derivatives come from forward-mode
  autodiff and three Newton-like rounds are taken.
  """
  num_steps = targets.shape[0] - 1
  p = _stationary_matrix(Spectrum(h, s2), base_lr, momentum, form)
  row0, _ = _matrix(nq.transition(0.0, h, momentum, form))
  row1, _ = _matrix(nq.transition(1.0, h, momentum, form))
  e0, e1 = row0[:, 0], row0[:, 0] - row1[:, 0]

  def advance(p, lr):
    a, b = _matrix(nq.transition(lr, h, momentum, form))
    return _propagate(p, a, b, s2)

  def one_step_expansion(p, lr, n):
    del n
    p_e0 = jnp.einsum('dij,dj->di', p, e0)
    q0 = _loss(h, jnp.sum(e0 * p_e0, -1)[:, None, None])
    q1 = _loss(h, jnp.sum(e1 * p_e0, -1)[:, None, None])
    e1_p_e1 = jnp.einsum('di,dij,dj->d', e1, p, e1)
    q2 = _loss(h, (e1_p_e1 + h**2 * s2)[:, None, None])
    return q0 - 2.0 * lr * q1 + lr**2 * q2, 2.0 * (lr * q2 - q1), q2

  def expansion(p, lr, n):
    def loss_ahead(lr):
      def body(i, pk):
        return jnp.where(i < n, advance(pk, lr), pk)

      return _loss(h, lax.fori_loop(0, horizon, body, p))

    def value_and_slope(lr):
      return jax.jvp(loss_ahead, (lr,), (jnp.ones_like(lr),))

    (g, slope), (_, curve) = jax.jvp(
      value_and_slope, (lr,), (jnp.ones_like(lr),)
    )
    return g, slope, 0.5 * curve

  if horizon == 1:
    expand, rounds = one_step_expansion, 1
  else:
    expand, rounds = expansion, 3

  def step(carry, t):
    p, lr = carry
    n = jnp.minimum(horizon, num_steps - t)
    target = targets[t + n]

    def newton(_, state):
      lr, _ = state
      g, slope, half_curve = expand(p, lr, n)
      u, reached = _nearest_root(half_curve, slope, g - target, lr)
      # A move beyond a factor 4 means the expansion is not to be trusted.
      lr = jnp.clip(lr + u, 0.25 * lr, 4.0 * lr + 1e-3 * base_lr)
      return lr, reached

    lr, reached = lax.fori_loop(0, rounds, newton, (lr, jnp.array(True)))
    clipped = ~reached | (lr <= 0)
    lr = jnp.maximum(lr, 0.0)
    p = advance(p, lr)
    return (p, lr), (lr, clipped, _loss(h, p))

  steps = jnp.arange(num_steps)
  _, (lrs, clipped, loss) = lax.scan(step, (p, base_lr), steps)
  return lrs, clipped, jnp.concatenate([_loss(h, p)[None], loss])


def match_schedule(
  rule: rules_lib.AveragingRule,
  spectrum: Spectrum,
  lr: float,
  num_steps: int,
  *,
  momentum: float = 0.0,
  momentum_form: str = 'heavy_ball',
  horizon: int | None = None,
) -> MatchedSchedule:
  """The scalar LR schedule whose excess loss matches an averaged iterate's.

  Target: L_A(t) = `averaged_excess_loss` (constant lam, averaging from the
  branch). Schedule: from the same stationary state, lam_t is chosen so that
  the exact unaveraged recursion (no momentum:
  v_{t+1} = (1 - lam_t h_i)^2 v_t + lam_t^2 h_i^2 s_i^2; with momentum the
  2x2 covariance recursion of (x, m)) gives

      sum_i 0.5 h_i v_i(t + n) = L_A(t + n),   n = min(horizon, T - t),

  with lam held over those n steps; lam_t is applied for one step and the
  next step solves again. For n = 1 the left side is exactly quadratic in
  lam_t; in general each step takes three Newton-like rounds on its
  second-order expansion (exact derivatives). The root nearest the previous
  LR (lam_{-1} = lam) is kept, so the schedule is continuous with lam.

  Why a horizon with momentum: one step of the LR moves x by only lam h,
  while its effect builds up over ~1 / (1 - mu) steps, so matching one step
  ahead forces large LR swings and misses the target; matching
  3 / (1 - mu) steps ahead gives a smooth schedule that tracks it.

  Where the target is out of reach (the loss cannot fall that fast) the
  LR minimising the loss is used, and where the root is negative 0 is used;
  both are flagged in `clipped`. One scalar cannot match every direction,
  only the sum: an SWA average over n >> 1 / alpha steps on a spectrum
  several decades wide has no scalar equivalent, and is reported clipped.

  Args:
    rule: the averaging rule of branch A.
    spectrum: the model's spectrum, D directions.
    lr: lam > 0, the base LR, stable on every direction.
    num_steps: T >= 1 branch steps.
    momentum: mu in [0, 1).
    momentum_form: 'heavy_ball' or 'trace' (optax.sgd; see
      `noisy_quadratic.transition`).
    horizon: n >= 1 steps ahead to match; default 1 without momentum,
      ceil(3 / (1 - mu)) with it.

  Returns:
    A `MatchedSchedule`.
  """
  target = averaged_excess_loss(
    rule,
    spectrum,
    lr,
    num_steps,
    momentum=momentum,
    momentum_form=momentum_form,
  )
  if horizon is None:
    horizon = 1 if momentum == 0 else int(np.ceil(3.0 / (1.0 - momentum)))
  horizon = _checks.integer('horizon', horizon, 1)
  lrs, clipped, matched = _solve(
    spectrum.h,
    spectrum.s2,
    jnp.asarray(lr, dtype=float),
    jnp.asarray(momentum, dtype=float),
    target,
    momentum_form,
    horizon,
  )
  return MatchedSchedule(*map(np.asarray, (lrs, target, matched, clipped)))


def write_schedule(
  path: str | os.PathLike,
  learning_rates: ArrayLike | MatchedSchedule,
  *,
  base_lr: float,
  branch_step: int,
) -> np.ndarray:
  """Writes a per-step LR array for the trainer's 'file' schedule.

  Entry i is the LR of global step i (the update from step i to i + 1):
  `base_lr` for i < t0 = `branch_step`, then the branch schedule, so the
  array has t0 + T entries. Written as float32 `.npy` to a temporary name
  in the same directory, then renamed, so a reader never sees a partial
  file.

  Args:
    path: destination, conventionally ending in '.npy' (written as given).
    learning_rates: (T,) branch LRs, or a `MatchedSchedule`.
    base_lr: LR before the branch, > 0.
    branch_step: t0 >= 0.

  Returns:
    The float32 array written.

  Raises:
    ValueError: bad base_lr or branch_step, or learning_rates that are not a
      1-D array of finite values >= 0.
  """
  if isinstance(learning_rates, MatchedSchedule):
    learning_rates = learning_rates.learning_rates
  _checks.positive('base_lr', base_lr)
  branch_step = _checks.integer('branch_step', branch_step, 0)
  lrs = np.asarray(learning_rates, dtype=np.float64)
  if lrs.ndim != 1:
    raise ValueError(f'learning_rates must be 1-D, got shape {lrs.shape}')
  _checks.in_range('learning_rates', lrs, 0.0)
  full = np.concatenate([np.full(branch_step, base_lr), lrs]).astype(np.float32)
  path = os.fspath(path)
  temporary = f'{path}.tmp-{os.getpid()}'
  try:
    with open(temporary, 'wb') as f:
      np.save(f, full)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return full
