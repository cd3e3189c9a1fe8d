"""The noisy-quadratic model of SGD: simulator, closed forms and solver.

Each mini-batch loss is a quadratic with the shared Hessian H and its own
minimum; in H's eigenbasis one SGD step is an exponential moving average of
batch minima. This package simulates that model (`noisy_quadratic`), states
its closed forms (`closed_forms`), turns iterate averaging into an
equivalent learning-rate schedule (`schedule_matching`), and estimates a
spectrum for a real network from its probes (`estimation`). Everything is
pure JAX/NumPy; nothing here trains a network.
"""

from sgd_quad.theory.closed_forms import (
  StationaryCovariance,
  StepLosses,
  ema_equivalent_alpha,
  ema_variance,
  equivalent_alpha,
  expected_step_losses,
  gradient_alignment,
  heavy_ball_stationary_covariance,
  heavy_ball_stationary_variance,
  held_out_optimal_step,
  sgd_autocovariance,
  sgd_stationary_variance,
  stationary_excess_loss,
  swa_equivalent_lr,
  swa_variance,
  train_batch_optimal_step,
  train_batch_step_loss,
  two_point_equivalent_alpha,
  two_point_variance,
)
from sgd_quad.theory.estimation import (
  batch_noise_trace,
  single_direction_spectrum,
  spectrum_from_eigenvalues,
)
from sgd_quad.theory.noisy_quadratic import (
  Moments,
  SimState,
  Simulation,
  simulate,
  stationary_state,
)
from sgd_quad.theory.rules import (
  AveragingRule,
  EmaRule,
  LawaRule,
  SwaRule,
  TwoPointRule,
  make_rule,
)
from sgd_quad.theory.schedule_matching import (
  MatchedSchedule,
  averaged_excess_loss,
  averaged_variance,
  match_schedule,
  schedule_excess_loss,
  write_schedule,
)
from sgd_quad.theory.spectrum import (
  Spectrum,
  excess_loss,
  log_spaced_spectrum,
  make_spectrum,
)

__all__ = [
  'AveragingRule',
  'EmaRule',
  'LawaRule',
  'MatchedSchedule',
  'Moments',
  'SimState',
  'Simulation',
  'Spectrum',
  'StationaryCovariance',
  'StepLosses',
  'SwaRule',
  'TwoPointRule',
  'averaged_excess_loss',
  'averaged_variance',
  'batch_noise_trace',
  'ema_equivalent_alpha',
  'ema_variance',
  'equivalent_alpha',
  'excess_loss',
  'expected_step_losses',
  'gradient_alignment',
  'heavy_ball_stationary_covariance',
  'heavy_ball_stationary_variance',
  'held_out_optimal_step',
  'log_spaced_spectrum',
  'make_rule',
  'make_spectrum',
  'match_schedule',
  'schedule_excess_loss',
  'sgd_autocovariance',
  'sgd_stationary_variance',
  'simulate',
  'single_direction_spectrum',
  'spectrum_from_eigenvalues',
  'stationary_excess_loss',
  'stationary_state',
  'swa_equivalent_lr',
  'swa_variance',
  'train_batch_optimal_step',
  'train_batch_step_loss',
  'two_point_equivalent_alpha',
  'two_point_variance',
  'write_schedule',
]
