"""Closed forms of the noisy-quadratic model of SGD.

Per eigendirection of the shared Hessian (curvature h, batch-minimum variance
s^2, learning rate lam, alpha = lam h) one SGD step is the exponential moving
average x_{t+1} = (1 - alpha) x_t + alpha xi_t of independent batch minima
xi_t ~ N(0, s^2). Everything here follows from that recursion: stationary
variances with and without heavy-ball momentum, the excess loss, one-step
optima on the training batch and on a held-out batch, gradient alignment,
and the variance of averaged iterates (two-point, EMA, SWA) with the
learning rate that gives plain SGD the same variance. All functions accept
numbers or arrays that broadcast: plain numbers and NumPy arrays give float64
NumPy results, JAX arrays give JAX results (also under jit).
"""

from typing import NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from sgd_quad.theory import _checks
from sgd_quad.theory.spectrum import Spectrum

# NumPy for plain inputs, JAX for JAX inputs (see the module docstring).
Array = np.ndarray | jax.Array


def _alpha(alpha: ArrayLike) -> Array:
  _checks.in_range('alpha', alpha, 0.0, 2.0, low_open=True, high_open=True)
  return _checks.namespace(alpha).asarray(alpha, dtype=float)


def _power_of_a(alpha: Array, n: ArrayLike) -> tuple[Array, Array]:
  """(a^n, 1 - a^n) for a = 1 - alpha, accurate for small alpha."""
  xp = _checks.namespace(alpha, n)
  below_one = alpha < 1.0
  log_a = xp.log1p(-xp.where(below_one, alpha, 0.5))
  direct = xp.power(1.0 - alpha, n)
  power = xp.where(below_one, xp.exp(n * log_a), direct)
  complement = xp.where(below_one, -xp.expm1(n * log_a), 1.0 - direct)
  return power, complement


def sgd_stationary_variance(alpha: ArrayLike, s2: ArrayLike) -> Array:
  """Stationary variance of plain SGD along one direction.

  Var_inf = s^2 alpha / (2 - alpha), the fixed point of
  v <- (1 - alpha)^2 v + alpha^2 s^2.

  Args:
    alpha: lam h, in (0, 2).
    s2: s^2 >= 0.

  Returns:
    Var_inf, broadcast over the arguments.
  """
  alpha = _alpha(alpha)
  _checks.in_range('s2', s2, 0.0)
  return s2 * alpha / (2.0 - alpha)


def sgd_autocovariance(
  alpha: ArrayLike, s2: ArrayLike, lag: ArrayLike
) -> Array:
  """Stationary autocovariance of plain SGD at a lag.

  Cov(x_t, x_{t+k}) = (1 - alpha)^k Var_inf.

  Args:
    alpha: lam h, in (0, 2).
    s2: s^2 >= 0.
    lag: k >= 0.

  Returns:
    The autocovariance, broadcast over the arguments.
  """
  _checks.in_range('lag', lag, 0.0)
  alpha = _alpha(alpha)
  lag = _checks.namespace(lag).asarray(lag, dtype=float)
  power, _ = _power_of_a(alpha, lag)
  return power * sgd_stationary_variance(alpha, s2)


class StationaryCovariance(NamedTuple):
  """Stationary second moments of heavy-ball SGD along one direction.

  Attributes:
    xx: E[x^2].
    xv: E[x v], v the velocity that produced x (x_t = x_{t-1} + v_t).
    vv: E[v^2].
  """

  xx: Array
  xv: Array
  vv: Array


def heavy_ball_stationary_covariance(
  lr: ArrayLike, h: ArrayLike, s2: ArrayLike, momentum: ArrayLike
) -> StationaryCovariance:
  """Exact stationary covariance of heavy-ball SGD along one direction.

  With v <- mu v - lam h (x - xi), x <- x + v and c = lam h:

      E[x^2] = s^2 c (1 + mu) / [(1 - mu)(2 (1 + mu) - c)],
      E[x v] = c E[x^2] / (1 + mu),   E[v^2] = 2 c E[x^2] / (1 + mu),

  from the fixed point of the three second-moment equations (x = x_prev + v
  gives E[x v] = E[v^2] / 2). Stable for 0 < c < 2 (1 + mu), 0 <= mu < 1.
  For mu = 0 it is s^2 alpha / (2 - alpha).

  Args:
    lr: lam > 0.
    h: curvature > 0.
    s2: s^2 >= 0.
    momentum: mu in [0, 1).

  Returns:
    A `StationaryCovariance`, broadcast over the arguments.
  """
  _checks.positive('lr', lr)
  _checks.positive('h', h)
  _checks.in_range('s2', s2, 0.0)
  _checks.in_range('momentum', momentum, 0.0, 1.0, high_open=True)
  _checks.stable_lr(lr, h, momentum)
  xp = _checks.namespace(lr, h, s2, momentum)
  mu = xp.asarray(momentum, dtype=float)
  c = xp.asarray(lr, dtype=float) * xp.asarray(h, dtype=float)
  xx = s2 * c * (1.0 + mu) / ((1.0 - mu) * (2.0 * (1.0 + mu) - c))
  return StationaryCovariance(
    xx=xx, xv=c * xx / (1.0 + mu), vv=2.0 * c * xx / (1.0 + mu)
  )


def heavy_ball_stationary_variance(
  lr: ArrayLike, h: ArrayLike, s2: ArrayLike, momentum: ArrayLike
) -> Array:
  """Exact stationary variance of heavy-ball SGD along one direction.

  Var = s^2 lam h (1 + mu) / [(1 - mu)(2 (1 + mu) - lam h)]; close to
  s^2 alpha_eff / (2 - alpha_eff) with alpha_eff = lam h / (1 - mu) only
  for small alpha_eff.

  Args:
    lr: lam > 0.
    h: curvature > 0.
    s2: s^2 >= 0.
    momentum: mu in [0, 1).

  Returns:
    Var, broadcast over the arguments.
  """
  return heavy_ball_stationary_covariance(lr, h, s2, momentum).xx


def stationary_excess_loss(
  spectrum: Spectrum, lr: ArrayLike, momentum: float = 0.0
) -> Array:
  """Expected excess full-batch loss of SGD at a constant learning rate.

  L - L* = sum_i 0.5 h_i Var_i(lam), exact (heavy-ball form with momentum).
  For small lam it is linear in the LR: (lam / (4 (1 - mu))) sum_i h_i^2
  s_i^2 = (lam / (4 (1 - mu))) tr(H^2 Sigma_B).

  Args:
    spectrum: the model's spectrum.
    lr: lam > 0, a number or an array of LRs (leading axes of the result).

  Returns:
    The excess loss, with the shape of `lr`.
  """
  xp = _checks.namespace(lr, *spectrum)
  lr = xp.asarray(lr, dtype=float)[..., None]
  var = heavy_ball_stationary_variance(lr, spectrum.h, spectrum.s2, momentum)
  return 0.5 * xp.sum(spectrum.h * var, axis=-1)


def train_batch_step_loss(
  eta: ArrayLike,
  batch_loss: ArrayLike,
  grad_sq_norm: ArrayLike,
  grad_curvature: ArrayLike,
) -> Array:
  """Loss of a batch B after one step along its own gradient (exact).

  L_B is quadratic, so f(eta) = L_B(theta - eta g_B)
  = L_B - eta |g_B|^2 + 0.5 eta^2 g_B^T H g_B.

  Args:
    eta: step sizes.
    batch_loss: L_B(theta).
    grad_sq_norm: |g_B|^2.
    grad_curvature: g_B^T H g_B.

  Returns:
    f(eta), broadcast over the arguments.
  """
  eta = _checks.namespace(eta).asarray(eta, dtype=float)
  return batch_loss - eta * grad_sq_norm + 0.5 * eta**2 * grad_curvature


def train_batch_optimal_step(
  grad_sq_norm: ArrayLike, grad_curvature: ArrayLike
) -> Array:
  """Step size minimising the batch's own loss along its gradient.

  eta* = |g_B|^2 / (g_B^T H g_B), about 1 / h of the directions that carry
  the gradient: far above the training LR.

  Args:
    grad_sq_norm: |g_B|^2 >= 0.
    grad_curvature: g_B^T H g_B > 0.

  Returns:
    eta*, broadcast over the arguments.
  """
  _checks.in_range('grad_sq_norm', grad_sq_norm, 0.0)
  _checks.positive('grad_curvature', grad_curvature)
  xp = _checks.namespace(grad_sq_norm)
  return xp.asarray(grad_sq_norm, dtype=float) / grad_curvature


class StepLosses(NamedTuple):
  """Expected losses after one plain gradient step of size eta.

  Attributes:
    train_batch: E[L_B(theta - eta g_B) - c_B], on the batch B of the step.
    held_out: E[L_B'(theta - eta g_B) - c_B'], on an independent batch B'.
  """

  train_batch: Array
  held_out: Array


def _stationary_xx(spectrum: Spectrum, lr: ArrayLike, momentum: float) -> Array:
  return heavy_ball_stationary_variance(lr, spectrum.h, spectrum.s2, momentum)


def expected_step_losses(
  eta: ArrayLike, spectrum: Spectrum, lr: float, momentum: float = 0.0
) -> StepLosses:
  """Expected batch losses after a step from the stationary iterate.

  The iterate is stationary for SGD at lam (momentum mu), X_i = Var_i; B and
  B' are fresh batches, independent of it and of each other. Per direction
  the step gives x' = (1 - eta h) x + eta h xi_B, so

      train_batch = sum_i 0.5 h_i (1 - eta h_i)^2 (X_i + s_i^2),
      held_out    = sum_i 0.5 h_i [(1 - eta h_i)^2 X_i + eta^2 h_i^2 s_i^2
                                   + s_i^2].

  The first falls until eta ~ 1/h; the second is minimised at
  `held_out_optimal_step` (lam / 2 without momentum).

  Args:
    eta: step sizes (any shape).
    spectrum: the model's spectrum.
    lr: lam > 0, the training LR that set the iterate's variance.
    momentum: mu of the training run, in [0, 1).

  Returns:
    `StepLosses`, each with the shape of `eta`.
  """
  xx = _stationary_xx(spectrum, lr, momentum)
  h, s2 = spectrum.h, spectrum.s2
  xp = _checks.namespace(eta, xx)
  eta = xp.asarray(eta, dtype=float)[..., None]
  shrink = (1.0 - eta * h) ** 2
  train = 0.5 * xp.sum(h * shrink * (xx + s2), axis=-1)
  held = 0.5 * xp.sum(h * (shrink * xx + (eta * h) ** 2 * s2 + s2), axis=-1)
  return StepLosses(train_batch=train, held_out=held)


def held_out_optimal_step(
  spectrum: Spectrum, lr: float, momentum: float = 0.0
) -> Array:
  """Step size minimising the expected loss of a held-out batch.

  Setting the eta-derivative of `expected_step_losses(...).held_out` to zero:

      eta* = sum_i h_i^2 X_i / sum_i h_i^3 (X_i + s_i^2).

  Without momentum X_i = s_i^2 alpha_i / (2 - alpha_i), so h_i^2 X_i =
  (lam / 2) h_i^3 (X_i + s_i^2) in every direction and eta* = lam / 2
  exactly, whatever the spectrum. With momentum eta* ~ lam / (2 (1 - mu)).

  Args:
    spectrum: the model's spectrum.
    lr: lam > 0 of the training run.
    momentum: mu of the training run, in [0, 1).

  Returns:
    eta*, a scalar.
  """
  xx = _stationary_xx(spectrum, lr, momentum)
  h, s2 = spectrum.h, spectrum.s2
  xp = _checks.namespace(xx)
  return xp.sum(h**2 * xx) / xp.sum(h**3 * (xx + s2))


def gradient_alignment(
  spectrum: Spectrum, lr: float, momentum: float = 0.0
) -> Array:
  """Squared cosine of a mini-batch gradient with the full gradient.

  With G = H x and g_B = H (x - xi), as a ratio of expectations (the
  many-direction limit): cos^2 = E[G.g_B]^2 / (E|G|^2 E|g_B|^2)
  = sum_i h_i^2 X_i / sum_i h_i^2 (X_i + s_i^2). Without momentum this is
  alpha / 2 for a single direction (X / (X + s^2) = alpha / 2), with
  momentum about alpha / (2 (1 - mu)).

  Args:
    spectrum: the model's spectrum.
    lr: lam > 0.
    momentum: mu in [0, 1).

  Returns:
    cos^2, a scalar.
  """
  xx = _stationary_xx(spectrum, lr, momentum)
  h2 = spectrum.h**2
  xp = _checks.namespace(xx)
  return xp.sum(h2 * xx) / xp.sum(h2 * (xx + spectrum.s2))


def equivalent_alpha(variance: ArrayLike, s2: ArrayLike) -> Array:
  """The alpha whose plain-SGD stationary variance is `variance`.

  Inverts Var = s^2 alpha / (2 - alpha): alpha = 2 r / (1 + r), r = Var/s^2.

  Args:
    variance: Var >= 0.
    s2: s^2 > 0.

  Returns:
    alpha in [0, 2).
  """
  _checks.in_range('variance', variance, 0.0)
  _checks.positive('s2', s2)
  ratio = _checks.namespace(variance).asarray(variance, dtype=float) / s2
  return 2.0 * ratio / (1.0 + ratio)


def two_point_variance(
  alpha: ArrayLike, s2: ArrayLike, gap: ArrayLike
) -> Array:
  """Stationary variance of the two-point average 0.5 (x_t + x_{t-k}).

  Var = 0.25 (2 Var_inf + 2 a^k Var_inf) = 0.5 Var_inf (1 + a^k),
  a = 1 - alpha.

  Args:
    alpha: lam h, in (0, 2).
    s2: s^2 >= 0.
    gap: k >= 1.

  Returns:
    Var, broadcast over the arguments.
  """
  _checks.in_range('gap', gap, 1.0)
  alpha = _alpha(alpha)
  gap = _checks.namespace(gap).asarray(gap, dtype=float)
  power, _ = _power_of_a(alpha, gap)
  return 0.5 * sgd_stationary_variance(alpha, s2) * (1.0 + power)


def two_point_equivalent_alpha(alpha: ArrayLike) -> Array:
  """alpha' of plain SGD equivalent to a two-point average with k >> 1/alpha.

  0.5 s^2 alpha / (2 - alpha) = s^2 alpha' / (2 - alpha') gives
  alpha' = 2 alpha / (4 - alpha), about half the LR.

  Args:
    alpha: lam h, in (0, 2).

  Returns:
    alpha'.
  """
  alpha = _alpha(alpha)
  return 2.0 * alpha / (4.0 - alpha)


def ema_variance(alpha: ArrayLike, s2: ArrayLike, decay: ArrayLike) -> Array:
  """Exact stationary variance of an EMA (decay beta) of the SGD iterates.

  The cascade of two EMAs (rates alpha and 1 - beta) of the batch minima:

      Var = s^2 alpha^2 (1 - beta)^2 (1 + a beta)
            / [(1 - a^2)(1 - beta^2)(1 - a beta)],   a = 1 - alpha,

  evaluated as s^2 alpha (1 - beta)(1 + a beta)
  / [(2 - alpha)(1 + beta)(1 - beta + alpha beta)] to avoid cancellation.

  Args:
    alpha: lam h, in (0, 2).
    s2: s^2 >= 0.
    decay: beta in [0, 1).

  Returns:
    Var, broadcast over the arguments.
  """
  alpha = _alpha(alpha)
  _checks.in_range('s2', s2, 0.0)
  _checks.in_range('decay', decay, 0.0, 1.0, high_open=True)
  beta = _checks.namespace(decay).asarray(decay, dtype=float)
  num = s2 * alpha * (1.0 - beta) * (1.0 + (1.0 - alpha) * beta)
  den = (2.0 - alpha) * (1.0 + beta) * (1.0 - beta + alpha * beta)
  return num / den


def ema_equivalent_alpha(alpha: ArrayLike, decay: ArrayLike) -> Array:
  """Approximate alpha' of plain SGD equivalent to an EMA of the iterates.

  1 / alpha' = 1 / alpha + 1 / (1 - beta): a strong cut where
  alpha >> 1 - beta, none where alpha << 1 - beta. Exact variance:
  `ema_variance`; its exact equivalent: `equivalent_alpha(ema_variance)`.

  Args:
    alpha: lam h, in (0, 2).
    decay: beta in [0, 1).

  Returns:
    alpha'.
  """
  alpha = _alpha(alpha)
  _checks.in_range('decay', decay, 0.0, 1.0, high_open=True)
  beta = _checks.namespace(decay).asarray(decay, dtype=float)
  return 1.0 / (1.0 / alpha + 1.0 / (1.0 - beta))


def swa_variance(
  alpha: ArrayLike, s2: ArrayLike, num_iterates: ArrayLike, period: int = 1
) -> Array:
  """Exact variance of the uniform mean of n iterates from a stationary start.

  With period c = 1 and a = 1 - alpha:

      Var = (Var_inf / n) [(1 + a)/(1 - a) - 2 a (1 - a^n) / (n (1 - a)^2)],

  which tends to s^2 / n for n >> 1 / alpha. Snapshots every c steps replace
  a by q = a^c; the same expression with q is the LAWA average of n
  snapshots.

  Args:
    alpha: lam h, in (0, 2).
    s2: s^2 >= 0.
    num_iterates: n >= 1.
    period: c >= 1, steps between averaged iterates.

  Returns:
    Var, broadcast over the arguments.
  """
  _checks.in_range('num_iterates', num_iterates, 1.0)
  period = _checks.integer('period', period, 1)
  alpha = _alpha(alpha)
  n = _checks.namespace(num_iterates).asarray(num_iterates, dtype=float)
  q, one_minus_q = _power_of_a(alpha, period)
  _, one_minus_qn = _power_of_a(alpha, period * n)
  bracket = (1.0 + q) / one_minus_q - 2.0 * q * one_minus_qn / (
    n * one_minus_q**2
  )
  return sgd_stationary_variance(alpha, s2) / n * bracket


def swa_equivalent_lr(
  lr: ArrayLike, h: ArrayLike, steps_since_start: ArrayLike
) -> Array:
  """1/t-decay learning rate equivalent to SWA started at t0, per direction.

  lam_n = lam / (1 + lam h n) for the update after n = t - t0 steps, i.e.
  alpha_n = 1 / (N + n) with N = 1 / alpha. Then the step reads
  (N + n) x_{n+1} = (N + n - 1) x_n + xi_n, which telescopes: x_n is the
  mean of x_{t0} (weight N - 1 = a / alpha) and the n batch minima since, so

      Var_n = ((a / alpha)^2 Var_inf + n s^2) / (a / alpha + n)^2,

  Var_inf at n = 0 and s^2 / n for n >> 1 / alpha, as the SWA mean. The
  scalar schedule for a whole spectrum is `match_schedule`.

  Args:
    lr: lam > 0.
    h: curvature > 0.
    steps_since_start: n >= 0.

  Returns:
    lam_n, broadcast over the arguments.
  """
  _checks.positive('lr', lr)
  _checks.positive('h', h)
  _checks.in_range('steps_since_start', steps_since_start, 0.0)
  xp = _checks.namespace(lr, h, steps_since_start)
  n = xp.asarray(steps_since_start, dtype=float)
  return lr / (1.0 + xp.asarray(lr, dtype=float) * h * n)
