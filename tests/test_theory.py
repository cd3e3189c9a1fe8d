"""Tests of sgd_quad.theory: closed forms, simulator, solver and estimation.

The Monte-Carlo checks run many independent chains (seeds times replicated
directions) with fixed keys; each estimate's standard error comes from the
spread across replicated directions and is asserted to be about 1% or less,
so the 3% tolerance against the exact closed forms is a real test. The
solver is checked by feeding its schedule back into the simulator, with the
same batch minima as the averaged run (common random numbers).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgd_quad import theory
from sgd_quad.theory import closed_forms as cf
from sgd_quad.theory import rules, schedule_matching

ALPHAS = np.array([0.01, 0.05, 0.2])
REPLICAS = 64


def _replicated(values: np.ndarray, replicas: int) -> theory.Spectrum:
  """One direction per (value, replica), s^2 = 1: chains to average over."""
  return theory.make_spectrum(np.repeat(values, replicas), 1.0)


def _estimate(second_moment, steps, burn_in: int, replicas: int):
  """Mean over time after burn-in and over replicas, with standard errors."""
  per_direction = np.asarray(second_moment)[steps >= burn_in].mean(axis=0)
  per_value = per_direction.reshape(-1, replicas)
  mean = per_value.mean(axis=1)
  return mean, per_value.std(axis=1, ddof=1) / np.sqrt(replicas) / mean


def _check(name, estimate, exact, tolerance=0.03):
  mean, rel_se = estimate
  error = mean / np.asarray(exact) - 1.0
  print(
    f'{name}: rel. error {np.round(error, 4)}, rel. SE {np.round(rel_se, 4)}'
  )
  assert np.all(rel_se < 0.011), f'{name}: sampling error too large {rel_se}'
  np.testing.assert_array_less(np.abs(error), tolerance)
  return error


# Monte-Carlo checks of the exact closed forms.


@pytest.fixture(scope='module')
def plain_run():
  """SGD at alpha in ALPHAS from x = 0, with EMA and two-point averages."""
  sim = theory.simulate(
    _replicated(ALPHAS, REPLICAS),
    1.0,
    3000,
    key=jax.random.key(0),
    num_seeds=64,
    init='zero',
    averages=(rules.EmaRule(0.99), rules.TwoPointRule(200)),
    record_every=10,
  )
  return sim


def test_stationary_variance_matches_simulation(plain_run):
  estimate = _estimate(
    plain_run.iterate.second_moment, plain_run.steps, 1000, REPLICAS
  )
  _check('sgd', estimate, cf.sgd_stationary_variance(ALPHAS, 1.0))


def test_ema_variance_matches_simulation(plain_run):
  estimate = _estimate(
    plain_run.averages[0].second_moment, plain_run.steps, 1000, REPLICAS
  )
  _check('ema 0.99', estimate, cf.ema_variance(ALPHAS, 1.0, 0.99))


def test_two_point_variance_matches_simulation(plain_run):
  estimate = _estimate(
    plain_run.averages[1].second_moment, plain_run.steps, 1000, REPLICAS
  )
  _check('two-point k=200', estimate, cf.two_point_variance(ALPHAS, 1.0, 200))


def test_heavy_ball_variance_matches_simulation():
  lam_h = np.array([0.001, 0.005, 0.02])
  # Shapes and rules as in plain_run, so its compiled scan is reused.
  sim = theory.simulate(
    _replicated(lam_h, REPLICAS),
    1.0,
    3000,
    key=jax.random.key(1),
    num_seeds=64,
    momentum=0.9,
    init='zero',
    averages=(rules.EmaRule(0.99), rules.TwoPointRule(200)),
    record_every=10,
  )
  estimate = _estimate(sim.iterate.second_moment, sim.steps, 1000, REPLICAS)
  exact = cf.heavy_ball_stationary_variance(1.0, lam_h, 1.0, 0.9)
  _check('heavy ball 0.9', estimate, exact)


def test_swa_variance_matches_simulation():
  replicas, num_iterates = 96, 1000
  sim = theory.simulate(
    _replicated(ALPHAS, replicas),
    1.0,
    num_iterates - 1,
    key=jax.random.key(2),
    num_seeds=256,
    init='stationary',
    averages=(rules.SwaRule(),),
    record_every=num_iterates - 1,
  )
  final = sim.averages[0].second_moment[-1:]
  estimate = _estimate(final, sim.steps[-1:], 0, replicas)
  _check('swa n=1000', estimate, cf.swa_variance(ALPHAS, 1.0, num_iterates))


def test_stationary_state_and_momentum_forms():
  spectrum = theory.make_spectrum([0.5, 2.0], 1.0)
  lr, momentum = 0.01, 0.9
  for form in ('heavy_ball', 'trace'):
    state = theory.stationary_state(
      jax.random.key(3), spectrum, lr, 200_000, momentum, form
    )
    exact = theory.noisy_quadratic.stationary_moments(
      spectrum, lr, momentum, form
    )
    sampled = [
      np.mean(state.x**2, 0),
      np.mean(state.x * state.buffer, 0),
      np.mean(state.buffer**2, 0),
    ]
    scale = np.sqrt(exact[0] * exact[2])
    for got, want in zip(sampled, exact, strict=True):
      np.testing.assert_array_less(
        np.abs(got - want), 0.02 * np.abs(want) + 0.01 * scale
      )
  # At a constant LR the two forms are one map, with velocity v = -lr m.
  x, m, xi = 0.3, -2.0, 0.7
  heavy = theory.noisy_quadratic.transition(lr, 2.0, momentum, 'heavy_ball')
  trace = theory.noisy_quadratic.transition(lr, 2.0, momentum, 'trace')
  v = -lr * m
  np.testing.assert_allclose(
    heavy.xx * x + heavy.xm * v + heavy.x_noise * xi,
    trace.xx * x + trace.xm * m + trace.x_noise * xi,
    rtol=1e-6,
  )


# Averaging operators of the simulator, exactly, on a deterministic path.


def _reference_average(rule, xs):
  """z_t by the rules' definitions (float64), for iterates xs[0..T]."""
  out = []
  for t in range(len(xs)):
    offset = t - rule.start_step
    if offset < 0:
      out.append(xs[t])
    elif isinstance(rule, rules.EmaRule):
      z = xs[rule.start_step]
      for u in range(rule.start_step + rule.period, t + 1, rule.period):
        z = rule.decay * z + (1 - rule.decay) * xs[u]
      out.append(z)
    elif isinstance(rule, rules.SwaRule):
      out.append(np.mean(xs[rule.start_step : t + 1 : rule.period]))
    elif isinstance(rule, rules.LawaRule):
      snaps = xs[rule.start_step : t + 1 : rule.period]
      out.append(np.mean(snaps[-rule.num_snapshots :]))
    else:
      partner = max(t - rule.gap, rule.start_step)
      out.append(0.5 * (xs[t] + xs[partner]))
  return np.array(out)


def test_simulator_averages_follow_their_definitions():
  # Without noise x_t = (1 - alpha)^t x_0, so every average is known exactly.
  averages = (
    rules.EmaRule(0.9, start_step=3, period=2),
    rules.SwaRule(start_step=2, period=3),
    rules.LawaRule(3, period=2, start_step=1),
    rules.TwoPointRule(4, start_step=2),
  )
  init = theory.SimState(np.ones((1, 1)), np.zeros((1, 1)))
  sim = theory.simulate(
    theory.make_spectrum(1.0, 0.0),
    0.1,
    20,
    key=jax.random.key(0),
    num_seeds=1,
    init=init,
    averages=averages,
  )
  xs = 0.9 ** np.arange(21)
  np.testing.assert_allclose(
    np.sqrt(sim.iterate.second_moment[:, 0]), xs, rtol=1e-5
  )
  for rule, moments in zip(averages, sim.averages, strict=True):
    np.testing.assert_allclose(
      np.sqrt(moments.second_moment[:, 0]),
      _reference_average(rule, xs),
      rtol=1e-5,
      err_msg=type(rule).__name__,
    )


def test_simulator_averages_agree_with_trainer_averagers():
  averaging = pytest.importorskip('sgd_quad.averaging')
  xs = 0.9 ** np.arange(21)
  pairs = [
    (rules.EmaRule(0.9, 3, 2), averaging.ema(0.9, start_step=3, period=2)),
    (rules.SwaRule(2, 3), averaging.swa(start_step=2, period=3)),
    (rules.LawaRule(3, 2, 1), averaging.lawa(3, period=2, start_step=1)),
  ]
  for rule, averager in pairs:
    update, result = jax.jit(averager.update), jax.jit(averager.result)
    state = averager.init(jnp.asarray(xs[0]))
    trainer = [result(state)]
    for x in xs[1:]:
      state = update(jnp.asarray(x), state)
      trainer.append(result(state))
    expected = _reference_average(rule, xs)
    for t, (value, valid) in enumerate(trainer):
      if valid:
        np.testing.assert_allclose(value, expected[t], rtol=1e-5)


# Exact moment recursions against the closed forms (deterministic).


def _solver_spectrum() -> theory.Spectrum:
  """100 directions over two decades of curvature, equal gradient noise."""
  return theory.log_spaced_spectrum(100, 0.01, 1.0)


SOLVER_LR, SOLVER_STEPS = 0.02, 1000


def test_averaged_moment_recursions_match_closed_forms():
  spectrum = _solver_spectrum()
  h, s2 = spectrum.h, spectrum.s2
  alpha = SOLVER_LR * h
  cases = [
    (rules.EmaRule(0.99), -1, cf.ema_variance(alpha, s2, 0.99)),
    (rules.SwaRule(), 999, cf.swa_variance(alpha, s2, 1000)),
    (rules.TwoPointRule(200), -1, cf.two_point_variance(alpha, s2, 200)),
    (rules.LawaRule(5, 50), -1, cf.swa_variance(alpha, s2, 5, 50)),
  ]
  for rule, index, exact in cases:
    loss = theory.averaged_excess_loss(rule, spectrum, SOLVER_LR, SOLVER_STEPS)
    np.testing.assert_allclose(loss[index], 0.5 * h @ exact, rtol=2e-4)
    stationary = cf.sgd_stationary_variance(alpha, s2)
    np.testing.assert_allclose(loss[0], 0.5 * h @ stationary, rtol=1e-5)
  var = theory.averaged_variance(
    rules.TwoPointRule(200), spectrum, SOLVER_LR, SOLVER_STEPS
  )
  np.testing.assert_allclose(var[-1], cases[2][2], rtol=2e-4)
  np.testing.assert_allclose(
    var[50], cf.two_point_variance(alpha, s2, 50), rtol=2e-4
  )


def test_swa_equivalent_lr_variance():
  alpha, steps = 0.05, 400
  lrs = np.asarray(cf.swa_equivalent_lr(alpha, 1.0, np.arange(steps)))
  var = [alpha / (2 - alpha)]
  for lr in lrs:
    var.append((1 - lr) ** 2 * var[-1] + lr**2)
  n = np.arange(steps + 1)
  weight = (1 - alpha) / alpha
  closed = (weight**2 * alpha / (2 - alpha) + n) / (weight + n) ** 2
  np.testing.assert_allclose(var, closed, rtol=1e-5)


# Closed-form unit checks.


def test_two_point_equivalent_alpha():
  alpha = np.array([0.001, 0.1, 1.0, 1.9])
  prime = cf.two_point_equivalent_alpha(alpha)
  np.testing.assert_allclose(prime, 2 * alpha / (4 - alpha), rtol=1e-6)
  np.testing.assert_allclose(
    cf.sgd_stationary_variance(prime, 2.0),
    0.5 * cf.sgd_stationary_variance(alpha, 2.0),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    cf.two_point_variance(alpha[:2], 2.0, 10**6),
    0.5 * cf.sgd_stationary_variance(alpha[:2], 2.0),
    rtol=1e-5,
  )


def test_ema_forms():
  alpha = np.array([0.001, 0.01, 0.1])
  np.testing.assert_allclose(
    cf.ema_variance(alpha, 1.0, 0.0),
    cf.sgd_stationary_variance(alpha, 1.0),
    rtol=1e-6,
  )
  # The textbook form of the cascade, evaluated in float64.
  a, beta = 1 - alpha, 0.99
  textbook = (
    alpha**2
    * (1 - beta) ** 2
    * (1 + a * beta)
    / ((1 - a**2) * (1 - beta**2) * (1 - a * beta))
  )
  np.testing.assert_allclose(cf.ema_variance(alpha, 1.0, beta), textbook, 1e-5)
  exact = cf.equivalent_alpha(cf.ema_variance(alpha, 1.0, beta), 1.0)
  np.testing.assert_allclose(
    cf.ema_equivalent_alpha(alpha, beta), exact, rtol=0.05
  )


def test_swa_forms():
  alpha, n = 0.05, 37
  # Direct sum of the stationary autocovariance over all pairs, period 2.
  lags = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) * 2
  direct = np.mean((1 - alpha) ** lags) * alpha / (2 - alpha)
  np.testing.assert_allclose(cf.swa_variance(alpha, 1.0, n, 2), direct, 1e-5)
  np.testing.assert_allclose(
    cf.swa_variance(alpha, 1.0, 1),
    cf.sgd_stationary_variance(alpha, 1.0),
    rtol=1e-5,
  )
  np.testing.assert_allclose(cf.swa_variance(0.01, 1.0, 10**6), 1e-6, rtol=2e-3)


def test_heavy_ball_forms():
  lam_h = np.array([0.001, 0.005, 0.02])
  np.testing.assert_allclose(
    cf.heavy_ball_stationary_variance(lam_h, 1.0, 2.0, 0.0),
    cf.sgd_stationary_variance(lam_h, 2.0),
    rtol=1e-6,
  )
  # The fixed point of the exact 2x2 covariance recursion, in float64.
  c, mu = 0.02, 0.9
  a = np.array([[1 - c, mu], [-c, mu]])
  b = np.array([c, c])
  p = np.zeros((2, 2))
  for _ in range(20_000):
    p = a @ p @ a.T + np.outer(b, b)
  cov = cf.heavy_ball_stationary_covariance(c, 1.0, 1.0, mu)
  np.testing.assert_allclose(
    [cov.xx, cov.xv, cov.vv], p.ravel()[[0, 1, 3]], 1e-5
  )


def test_one_step_optima():
  spectrum = theory.log_spaced_spectrum(50, 0.01, 10.0, noise_power=1.0)
  lr = 0.01
  np.testing.assert_allclose(
    cf.held_out_optimal_step(spectrum, lr), lr / 2, rtol=1e-5
  )
  etas = np.linspace(0.0, 0.4, 8001)
  losses = cf.expected_step_losses(etas, spectrum, lr)
  assert abs(etas[np.argmin(losses.held_out)] / (lr / 2) - 1) < 0.05
  np.testing.assert_allclose(losses.train_batch[0], losses.held_out[0])
  assert etas[np.argmin(losses.train_batch)] > 10 * lr
  with_momentum = cf.held_out_optimal_step(spectrum, 0.001, momentum=0.9)
  np.testing.assert_allclose(with_momentum, 0.001 / 0.2, rtol=0.1)
  # Training batch: f(eta) is exactly quadratic with its minimum at eta*.
  eta_star = cf.train_batch_optimal_step(4.0, 2.0)
  np.testing.assert_allclose(eta_star, 2.0)
  f = cf.train_batch_step_loss(
    np.array([1.9, 2.0, 2.1]), 3.0, grad_sq_norm=4.0, grad_curvature=2.0
  )
  assert f[1] < f[0] and f[1] < f[2]
  np.testing.assert_allclose(f[1], 3.0 - 4.0)


def test_gradient_alignment_and_excess_loss():
  alpha = 0.02
  single = theory.make_spectrum(1.0, 3.0)
  np.testing.assert_allclose(
    cf.gradient_alignment(single, alpha), alpha / 2, rtol=1e-5
  )
  np.testing.assert_allclose(
    cf.gradient_alignment(single, alpha * 0.1, momentum=0.9),
    alpha / 2,
    rtol=0.02,
  )
  spectrum = theory.log_spaced_spectrum(20, 0.1, 1.0)
  lrs = np.array([1e-4, 2e-4])
  loss = cf.stationary_excess_loss(spectrum, lrs)
  linear = lrs / 4 * np.sum(spectrum.h**2 * spectrum.s2)
  np.testing.assert_allclose(loss, linear, rtol=1e-3)


# Schedule matching.


def test_matched_schedules_reproduce_averaged_losses():
  spectrum, lr, steps, every = _solver_spectrum(), SOLVER_LR, SOLVER_STEPS, 20
  averages = (rules.EmaRule(0.99), rules.SwaRule(), rules.TwoPointRule(200))
  key = jax.random.key(4)
  common = dict(key=key, num_seeds=128, init_lr=lr, record_every=every)
  averaged = theory.simulate(spectrum, lr, steps, averages=averages, **common)
  for rule, moments in zip(averages, averaged.averages, strict=True):
    matched = theory.match_schedule(rule, spectrum, lr, steps)
    name = type(rule).__name__
    # The exact target agrees with the Monte-Carlo average ...
    target = np.asarray(matched.target_loss)[averaged.steps]
    exact_error = np.abs(np.asarray(moments.excess_loss) / target - 1)
    assert exact_error.max() < 0.05, name
    # ... and the schedule, simulated without averaging, follows it.
    raw = theory.simulate(spectrum, matched.learning_rates, steps, **common)
    error = np.abs(raw.iterate.excess_loss / moments.excess_loss - 1)
    print(f'{name}: max rel. error {error.max():.4f}')
    assert error.max() < 0.05, name
    np.testing.assert_array_less(matched.learning_rates, lr * 1.0001)


def test_matched_loss_is_consistent_and_trivial_rule_keeps_lr():
  spectrum, lr, steps = _solver_spectrum(), SOLVER_LR, SOLVER_STEPS
  matched = theory.match_schedule(rules.TwoPointRule(200), spectrum, lr, steps)
  replay = theory.schedule_excess_loss(
    spectrum, matched.learning_rates, base_lr=lr
  )
  np.testing.assert_allclose(replay, matched.matched_loss, rtol=1e-5)
  assert np.mean(matched.clipped) < 0.01
  # An EMA with decay 0 is the iterate itself: the schedule is the base LR.
  same = theory.match_schedule(rules.EmaRule(0.0), spectrum, lr, steps)
  np.testing.assert_allclose(same.learning_rates, lr, rtol=1e-4)
  assert not np.any(same.clipped)


def test_matched_schedule_with_momentum():
  # optax.sgd's form; lr / (1 - mu) = SOLVER_LR, as in the plain tests.
  spectrum, lr = _solver_spectrum(), SOLVER_LR * 0.1
  for rule in (rules.EmaRule(0.99),):
    matched = theory.match_schedule(
      rule, spectrum, lr, SOLVER_STEPS, momentum=0.9, momentum_form='trace'
    )
    error = np.abs(matched.matched_loss / matched.target_loss - 1)
    assert error.max() < 0.02, type(rule).__name__


def test_solver_root_keeps_the_lr_non_negative():
  # (u + 0.1)(u - 0.3): below the target at a small LR the loss first falls
  # with the LR (contraction), then rises (noise), so the nearer root can be
  # a negative LR; the solver must take the other one, not decay to zero.
  root = schedule_matching._nearest_root
  a, b, c = 1.0, -0.2, -0.03
  u, reached = root(a, b, c, lr=0.05)
  assert bool(reached) and float(u) == pytest.approx(0.3)
  u, reached = root(a, b, c, lr=0.2)
  assert bool(reached) and float(u) == pytest.approx(-0.1)
  # (u + 0.1)(u + 0.3) at LR 0.05: every root is a negative LR.
  u, reached = root(1.0, 0.4, 0.03, lr=0.05)
  assert not bool(reached) and float(u) == pytest.approx(-0.2)  # the vertex


def test_write_schedule_round_trip(tmp_path):
  path = tmp_path / 'lr.npy'
  path.write_bytes(b'stale')
  lrs = np.array([0.1, 0.05, 0.025])
  written = theory.write_schedule(path, lrs, base_lr=0.2, branch_step=4)
  loaded = np.load(path)
  assert loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, written)
  np.testing.assert_allclose(loaded, [0.2] * 4 + list(lrs), rtol=1e-7)
  assert os.listdir(tmp_path) == ['lr.npy']
  matched = theory.MatchedSchedule(
    np.array([0.3, 0.2]), np.zeros(3), np.zeros(3), np.zeros(2, bool)
  )
  written = theory.write_schedule(path, matched, base_lr=0.02, branch_step=0)
  np.testing.assert_array_equal(
    np.load(path), matched.learning_rates.astype(np.float32)
  )


# Estimation.


def test_single_direction_reproduces_measurements():
  spectrum = theory.single_direction_spectrum(2.0, noise_trace=8.0)
  np.testing.assert_allclose(spectrum.h, [2.0])
  np.testing.assert_allclose(spectrum.h**2 * spectrum.s2, [8.0])
  lr = 1e-4
  np.testing.assert_allclose(
    cf.stationary_excess_loss(spectrum, lr), lr / 4 * 8.0, rtol=1e-3
  )
  np.testing.assert_allclose(
    theory.batch_noise_trace(64.0, 16, dataset_size=17), 0.25
  )


def test_spectrum_from_eigenvalues_recovers_a_hessian_like_noise():
  true = theory.log_spaced_spectrum(40, 0.01, 5.0, noise_power=1.0)
  h, w = np.asarray(true.h), np.asarray(true.h**2 * true.s2)
  kappa = np.sum(h * w) / np.sum(w)
  spectrum = theory.spectrum_from_eigenvalues(
    h[-5:],
    hessian_trace=h.sum(),
    curvature_along_gradient=kappa,
    noise_trace=w.sum(),
  )
  got_w = np.asarray(spectrum.h**2 * spectrum.s2)
  np.testing.assert_allclose(spectrum.h[:5], h[-5:], rtol=1e-6)
  np.testing.assert_allclose(got_w[:5], w[-5:], rtol=1e-5)
  np.testing.assert_allclose(got_w.sum(), w.sum(), rtol=1e-5)
  np.testing.assert_allclose(
    np.sum(spectrum.h * got_w) / got_w.sum(), kappa, rtol=1e-5
  )
  with pytest.raises(ValueError, match='^hessian_trace'):
    theory.spectrum_from_eigenvalues(
      [3.0, 2.0],
      hessian_trace=4.0,
      curvature_along_gradient=1.0,
      noise_trace=1.0,
    )


# Argument checks.


@pytest.mark.parametrize(
  'call, name',
  [
    (lambda: cf.sgd_stationary_variance(2.0, 1.0), 'alpha'),
    (lambda: cf.sgd_stationary_variance(0.0, 1.0), 'alpha'),
    (lambda: cf.ema_variance(0.1, 1.0, 1.0), 'decay'),
    (lambda: cf.ema_equivalent_alpha(0.1, -0.1), 'decay'),
    (lambda: cf.two_point_variance(0.1, 1.0, 0), 'gap'),
    (lambda: cf.heavy_ball_stationary_variance(0.0, 1.0, 1.0, 0.9), 'lr'),
    (lambda: cf.heavy_ball_stationary_variance(1.0, 5.0, 1.0, 0.5), 'lr'),
    (lambda: cf.heavy_ball_stationary_variance(0.1, 1.0, 1.0, 1.0), 'momentum'),
    (lambda: rules.make_rule('ema', decay=1.0), 'decay'),
    (lambda: rules.make_rule('two_point', gap=0), 'gap'),
    (lambda: rules.make_rule('lawa', num_snapshots=0), 'num_snapshots'),
    (lambda: rules.make_rule('median'), 'name'),
    (lambda: rules.make_rule('swa', decay=0.5), 'unknown parameters'),
    (lambda: theory.make_spectrum([1.0, -1.0], 1.0), 'h'),
    (
      lambda: theory.match_schedule(
        rules.SwaRule(), theory.make_spectrum(1.0, 1.0), 0.0, 10
      ),
      'lr',
    ),
    (
      lambda: theory.simulate(
        theory.make_spectrum(1.0, 1.0),
        -0.1,
        10,
        key=jax.random.key(0),
        num_seeds=2,
        init='zero',
      ),
      'lr',
    ),
    (
      lambda: theory.simulate(
        theory.make_spectrum(1.0, 1.0),
        0.1,
        10,
        key=jax.random.key(0),
        num_seeds=2,
        record_every=3,
      ),
      'num_steps',
    ),
    (
      lambda: theory.write_schedule('x.npy', [0.1], base_lr=0.0, branch_step=0),
      'base_lr',
    ),
    (
      lambda: theory.write_schedule(
        'x.npy', [0.1], base_lr=0.1, branch_step=-1
      ),
      'branch_step',
    ),
  ],
)
def test_bad_arguments_raise_value_error_naming_them(call, name):
  with pytest.raises(ValueError, match=f'^{name}'):
    call()
