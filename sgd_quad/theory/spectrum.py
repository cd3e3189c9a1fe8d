"""The spectrum of the noisy-quadratic model and the loss it implies.

In the eigenbasis of the shared Hessian H every direction i is independent:
it has a curvature h_i and a variance s_i^2 of the batch minima theta_B along
it, so that the mini-batch gradient noise along i has variance h_i^2 s_i^2.
A `Spectrum` holds these two vectors; every simulator, closed form and
solver in `sgd_quad.theory` takes one.
"""

from typing import NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from sgd_quad.theory import _checks


class Spectrum(NamedTuple):
  """Per-direction parameters of the noisy-quadratic model.

  Attributes:
    h: (D,) Hessian eigenvalues h_i > 0.
    s2: (D,) variances s_i^2 >= 0 of the batch minima along each eigenvector;
      the gradient noise along direction i has variance h_i^2 s_i^2.
  """

  h: np.ndarray
  s2: np.ndarray


def make_spectrum(h: ArrayLike, s2: ArrayLike) -> Spectrum:
  """Checks and packs a spectrum.

  Args:
    h: curvatures, a number or 1-D array, all > 0.
    s2: batch-minimum variances, broadcastable to `h`, all >= 0.

  Returns:
    A `Spectrum` of two 1-D float64 NumPy arrays (JAX code casts them to
    its default float dtype).

  Raises:
    ValueError: if `h` is not 1-D or not positive, or `s2` is negative or
      does not broadcast to `h`.
  """
  h = np.atleast_1d(np.asarray(h, dtype=np.float64))
  if h.ndim != 1:
    raise ValueError(f'h must be a number or 1-D array, got shape {h.shape}')
  _checks.positive('h', h)
  _checks.in_range('s2', s2, 0.0)
  try:
    s2 = np.broadcast_to(np.asarray(s2, dtype=np.float64), h.shape).copy()
  except ValueError as e:
    raise ValueError(
      f's2 must broadcast to the shape of h {h.shape}, got {np.shape(s2)}'
    ) from e
  return Spectrum(h=h, s2=s2)


def log_spaced_spectrum(
  num_directions: int,
  min_curvature: float,
  max_curvature: float,
  *,
  gradient_noise: float = 1.0,
  noise_power: float = 0.0,
) -> Spectrum:
  """Curvatures log-spaced between two values, with power-law noise.

  h_i = min * (max / min)^(i / (D - 1)), and the gradient-noise variance
  along direction i is w_i = gradient_noise * h_i^noise_power, so that
  s_i^2 = w_i / h_i^2. `noise_power = 0` is isotropic gradient noise (every
  direction contributes the same stationary excess loss to first order);
  `noise_power = 1` is noise covariance proportional to H.

  Args:
    num_directions: D >= 1.
    min_curvature: smallest h, > 0.
    max_curvature: largest h, >= min_curvature.
    gradient_noise: scale of w_i, > 0.
    noise_power: exponent of h in w_i.

  Returns:
    A `Spectrum` with D directions, curvatures increasing.
  """
  num = _checks.integer('num_directions', num_directions, 1)
  _checks.positive('min_curvature', min_curvature)
  _checks.in_range('max_curvature', max_curvature, min_curvature, np.inf)
  _checks.positive('gradient_noise', gradient_noise)
  h = np.geomspace(min_curvature, max_curvature, num)
  s2 = gradient_noise * h**noise_power / h**2
  return make_spectrum(h, s2)


def excess_loss(
  spectrum: Spectrum, second_moment: ArrayLike
) -> np.ndarray | jax.Array:
  """Expected excess full-batch loss from per-direction second moments.

  L - L* = sum_i 0.5 h_i E[x_i^2], where x = theta - theta* in the
  eigenbasis.

  Args:
    spectrum: the model's spectrum, D directions.
    second_moment: E[x_i^2] with trailing axis D (any leading axes).

  Returns:
    The excess loss, with the leading axes of `second_moment`.
  """
  xp = _checks.namespace(second_moment)
  return 0.5 * xp.sum(spectrum.h * xp.asarray(second_moment), axis=-1)
