"""Mini-batch loss probes: line searches, quadratic fits, gradients, curvature.

The paper's central measurement, as pure functions usable from a notebook and
from the trainer: the loss of a batch B and of held-out batches at
theta - eta g_B for a grid of eta (`line_search`), least-squares parabolas of
those curves (`fit_quadratic`), gradient alignment and noise
(`gradient_statistics`), top Hessian eigenvalues overall and per layer
(`top_hessian_eigenvalue`, `per_layer_top_eigenvalues`) and their figures.
Every probe returns a NamedTuple of arrays and never changes the model.
"""

from sgd_quad.probes.curvature import (
  CurvatureInfo,
  EigenInfo,
  batch_curvature,
  hvp,
  parameter_groups,
  per_layer_top_eigenvalues,
  top_hessian_eigenvalue,
)
from sgd_quad.probes.fit import QuadraticFit, fit_quadratic
from sgd_quad.probes.gradients import (
  GradientStats,
  cosine,
  gradient_statistics,
  gradient_statistics_fn,
  tree_norm,
  tree_vdot,
)
from sgd_quad.probes.losses import (
  BN_MODES,
  OBJECTIVES,
  batch_losses,
  cross_entropy,
  make_loss_fn,
)
from sgd_quad.probes.plots import plot_line_search, plot_trajectory_losses
from sgd_quad.probes.sweep import (
  DEFAULT_STRATEGIES,
  STRATEGIES,
  LineSearchInfo,
  interpolation_losses,
  line_search,
  line_search_fn,
  losses_along,
  resolve_strategy,
  validate_etas,
)

__all__ = [
  'BN_MODES',
  'DEFAULT_STRATEGIES',
  'OBJECTIVES',
  'STRATEGIES',
  'CurvatureInfo',
  'EigenInfo',
  'GradientStats',
  'LineSearchInfo',
  'QuadraticFit',
  'batch_curvature',
  'batch_losses',
  'cosine',
  'cross_entropy',
  'fit_quadratic',
  'gradient_statistics',
  'gradient_statistics_fn',
  'hvp',
  'interpolation_losses',
  'line_search',
  'line_search_fn',
  'losses_along',
  'make_loss_fn',
  'parameter_groups',
  'per_layer_top_eigenvalues',
  'plot_line_search',
  'plot_trajectory_losses',
  'resolve_strategy',
  'top_hessian_eigenvalue',
  'tree_norm',
  'tree_vdot',
  'validate_etas',
]
