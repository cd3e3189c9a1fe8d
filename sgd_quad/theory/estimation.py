"""Spectra of the noisy-quadratic model estimated from a real training run.

The solver needs per-direction curvatures h_i and batch-minimum variances
s_i^2. A network's probes measure a few aggregates instead: the top Hessian
eigenvalues, the Hessian trace, the curvature along the mini-batch gradient
g^T H g / |g|^2, and the trace of the gradient-noise covariance at the
training batch size. The functions here turn those numbers into a
`Spectrum`, from the crudest single effective direction to top eigenvalues
plus a bulk, and say which modelling choice each one makes.
"""

import numpy as np
from jax.typing import ArrayLike

from sgd_quad.theory import _checks
from sgd_quad.theory.spectrum import Spectrum, make_spectrum


def batch_noise_trace(
  per_example_trace: float, batch_size: int, dataset_size: int | None = None
) -> float:
  """Trace of the mini-batch gradient covariance from the per-example one.

  tr Cov(g_B) = tr Cov(g_1) / b for batches drawn with replacement, times
  the finite-population factor (N - b) / (N - 1) when drawn without
  replacement from N examples.

  Args:
    per_example_trace: tr Cov of one example's gradient, >= 0.
    batch_size: b >= 1.
    dataset_size: N >= b, or None for sampling with replacement.

  Returns:
    The trace at batch size b.
  """
  _checks.in_range('per_example_trace', per_example_trace, 0.0)
  batch_size = _checks.integer('batch_size', batch_size, 1)
  trace = per_example_trace / batch_size
  if dataset_size is not None:
    dataset_size = _checks.integer('dataset_size', dataset_size, batch_size)
    trace *= (dataset_size - batch_size) / max(dataset_size - 1, 1)
  return float(trace)


def single_direction_spectrum(
  curvature_along_gradient: float, noise_trace: float
) -> Spectrum:
  """The simplest model: one effective direction.

  h = g^T H g / |g|^2 measured along mini-batch gradients, and
  s^2 = tr Cov(g_B) / h^2. The choice: the mini-batch gradient is mostly
  noise (cos^2 with the full gradient ~ alpha / 2), so its curvature is the
  noise-weighted mean curvature sum_i h_i w_i / sum_i w_i (w_i = h_i^2 s_i^2
  the noise along direction i), and the one direction carries the whole
  noise trace w = sum_i w_i. The model then reproduces both measurements
  exactly, and with them the first-order stationary excess loss
  (lam / (4 (1 - mu))) tr Cov(g_B), which depends on the noise trace only;
  the LR and batch size enter through the measurements (take the noise
  trace at the training batch size, as `probes.GradientStats.noise_trace`
  does, or convert with `batch_noise_trace`). What it cannot
  carry is the spread of relaxation times, 1 / (lam h_i / (1 - mu)).

  Args:
    curvature_along_gradient: g^T H g / |g|^2 > 0, averaged over batches.
    noise_trace: tr Cov(g_B) > 0 at the training batch size.

  Returns:
    A one-direction `Spectrum`.
  """
  _checks.positive('curvature_along_gradient', curvature_along_gradient)
  _checks.positive('noise_trace', noise_trace)
  h = float(curvature_along_gradient)
  return make_spectrum(h, float(noise_trace) / h**2)


def spectrum_from_eigenvalues(
  eigenvalues: ArrayLike,
  *,
  hessian_trace: float,
  curvature_along_gradient: float,
  noise_trace: float,
) -> Spectrum:
  """Top Hessian eigenvalues plus one bulk direction.

  Assumes gradient noise proportional to the Hessian, Cov(g_B) = c H (the
  Fisher ~ Hessian picture), so w_i = c h_i and s_i^2 = c / h_i. Then

      c = tr Cov(g_B) / tr H,
      curvature along g = tr(H Cov) / tr Cov = tr(H^2) / tr H.

  The k measured eigenvalues (sums S1 = sum h_i, S2 = sum h_i^2) become k
  directions; the rest of the spectrum becomes one bulk direction of
  curvature h_b = (kappa tr H - S2) / (tr H - S1), the tr-H-weighted mean
  curvature of the rest, with the noise of all bulk directions,
  w_b = c (tr H - S1), so s_b^2 = w_b / h_b^2 (identical directions add
  their noise, since the variance is linear in s^2).

  Args:
    eigenvalues: the top-k eigenvalues, all > 0.
    hessian_trace: tr H (e.g. Hutchinson), > sum of `eigenvalues`.
    curvature_along_gradient: kappa = g^T H g / |g|^2 > 0.
    noise_trace: tr Cov(g_B) > 0 at the training batch size.

  Returns:
    A `Spectrum` with k + 1 directions (the bulk last).

  Raises:
    ValueError: if the measurements are inconsistent with the model: the
      trace does not exceed the top eigenvalues' sum, or the bulk curvature
      comes out <= 0 or above the smallest measured eigenvalue.
  """
  top = np.atleast_1d(np.asarray(eigenvalues, dtype=np.float64))
  if top.ndim != 1 or top.size == 0:
    raise ValueError(f'eigenvalues must be a non-empty 1-D array, got {top}')
  _checks.positive('eigenvalues', top)
  _checks.positive('hessian_trace', hessian_trace)
  _checks.positive('curvature_along_gradient', curvature_along_gradient)
  _checks.positive('noise_trace', noise_trace)
  s1, s2 = top.sum(), (top**2).sum()
  rest = hessian_trace - s1
  if rest <= 0:
    raise ValueError(
      f'hessian_trace must exceed the sum of eigenvalues {s1:g}, got '
      f'{hessian_trace:g}'
    )
  bulk = (curvature_along_gradient * hessian_trace - s2) / rest
  if not 0 < bulk <= top.min():
    raise ValueError(
      'curvature_along_gradient must put the bulk curvature '
      f'(kappa tr H - S2) / (tr H - S1) in (0, {top.min():g}], got kappa = '
      f'{curvature_along_gradient:g}, bulk = {bulk:g}'
    )
  scale = noise_trace / hessian_trace
  h = np.append(top, bulk)
  w = scale * np.append(top, rest)
  return make_spectrum(h, w / h**2)
