"""Least-squares parabolas of loss-vs-step-size curves (experiment E2).

Each curve y_k = f(eta_k) is fitted by f(eta) ~ c0 + c1 eta + c2 eta^2 over a
window of grid points: the full grid, or ('argmin2') the points from the start
of the grid up to twice the measured argmin, at least 3 of them. Non-finite
losses (a diverged step) are left out of every fit. The fit is solved in a
centred, scaled variable z = (eta - m) / s (m the midpoint and s the half-width
of the window) by an SVD-based least-squares solve, which stays well
conditioned for grids spanning several decades; the coefficients are then
returned in the original units of eta. Everything is vectorised over leading
axes and jit-compatible: windows are weights, never dynamic shapes.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sgd_quad.probes import losses as losses_lib

WINDOWS = ('full', 'argmin2')
MIN_POINTS = 3


class QuadraticFit(NamedTuple):
  """Least-squares parabola of one or more curves (leading axes ...).

  With r_k = y_k - (c0 + c1 eta_k + c2 eta_k^2) and sums over the window W:

  Attributes:
    coeffs: float [..., 3], (c0, c1, c2) in the units of eta.
    r2: float [...], R^2 = 1 - sum_W r^2 / sum_W (y - mean_W y)^2 (1 when
      the window's losses are all equal and the fit is exact).
    rel_residual: float [...], |r|_W / |y - mean_W y|_W = sqrt(1 - R^2): the
      residual norm relative to the spread of the fitted losses.
    rms_residual: float [...], sqrt(mean_W r^2), in loss units.
    argmin: float [...], -c1 / (2 c2), the vertex (a maximum when not convex).
    min_loss: float [...], c0 - c1^2 / (4 c2), the value at the vertex.
    convex: bool [...], c2 > 0.
    grid_argmin: float [...], the grid step size with the lowest finite loss.
    grid_min: float [...], that lowest loss.
    window_mask: bool [..., K], the grid points fitted.
    num_points: int32 [...], how many.
    windowed: bool [], True for the 'argmin2' window, False for 'full'.
  """

  coeffs: jax.Array
  r2: jax.Array
  rel_residual: jax.Array
  rms_residual: jax.Array
  argmin: jax.Array
  min_loss: jax.Array
  convex: jax.Array
  grid_argmin: jax.Array
  grid_min: jax.Array
  window_mask: jax.Array
  num_points: jax.Array
  windowed: jax.Array


def window_mask(etas: jax.Array, y: jax.Array, window: str) -> jax.Array:
  """Grid points one curve's fit uses.

  'full': every point with a finite loss. 'argmin2': the first n points, where
  n is the number of grid points with eta <= 2 * (measured argmin), raised to
  at least 3; non-finite losses excluded.

  Args:
    etas: float [K], sorted increasing.
    y: float [K], the losses.
    window: 'full' or 'argmin2'.

  Returns:
    bool [K].
  """
  finite = jnp.isfinite(y)
  if window == 'full':
    return finite
  best = jnp.argmin(jnp.where(finite, y, jnp.inf))
  count = jnp.sum(etas <= 2.0 * etas[best])
  count = jnp.maximum(count, MIN_POINTS)
  return finite & (jnp.arange(etas.shape[0]) < count)


def _fit_one(etas, y, window):
  mask = window_mask(etas, y, window)
  w = mask.astype(y.dtype)
  y0 = jnp.where(mask, y, 0.0)
  num = jnp.sum(mask)

  # Centre and scale eta over the window so the design matrix is well posed.
  lo = jnp.min(jnp.where(mask, etas, jnp.inf))
  hi = jnp.max(jnp.where(mask, etas, -jnp.inf))
  mid = 0.5 * (lo + hi)
  half = 0.5 * (hi - lo)
  half = jnp.where(half > 0, half, 1.0)
  z = jnp.where(mask, (etas - mid) / half, 0.0)
  design = jnp.stack([jnp.ones_like(z), z, z * z], axis=-1) * w[:, None]
  a, _, _, _ = jnp.linalg.lstsq(design, y0 * w)
  a0, a1, a2 = a[0], a[1], a[2]

  # Back to the units of eta: f = a0 + a1 z + a2 z^2, z = (eta - mid) / half.
  c2 = a2 / half**2
  c1 = a1 / half - 2.0 * a2 * mid / half**2
  c0 = a0 - a1 * mid / half + a2 * mid**2 / half**2
  coeffs = jnp.stack([c0, c1, c2])

  fitted = a0 + a1 * z + a2 * z * z
  resid = w * (y0 - fitted)
  ss_res = jnp.sum(resid**2)
  mean_y = jnp.sum(w * y0) / jnp.maximum(num, 1)
  ss_tot = jnp.sum(w * (y0 - mean_y) ** 2)
  exact = ss_res <= 0
  safe_tot = jnp.where(ss_tot > 0, ss_tot, 1.0)
  r2 = jnp.where(
    ss_tot > 0, 1.0 - ss_res / safe_tot, jnp.where(exact, 1.0, -jnp.inf)
  )
  rel = jnp.where(
    ss_tot > 0,
    jnp.sqrt(ss_res / safe_tot),
    jnp.where(exact, 0.0, jnp.inf),
  )
  rms = jnp.sqrt(ss_res / jnp.maximum(num, 1))

  # Vertex in the centred variable, where it is computed without cancellation.
  safe_a2 = jnp.where(a2 != 0, a2, 1.0)
  z_star = jnp.where(a2 != 0, -a1 / (2.0 * safe_a2), jnp.nan)
  argmin = mid + half * z_star
  min_loss = a0 - 0.25 * a1 * a1 / safe_a2
  min_loss = jnp.where(a2 != 0, min_loss, jnp.nan)

  finite = jnp.isfinite(y)
  best = jnp.argmin(jnp.where(finite, y, jnp.inf))
  any_finite = jnp.any(finite)
  return QuadraticFit(
    coeffs=coeffs,
    r2=r2,
    rel_residual=rel,
    rms_residual=rms,
    argmin=argmin,
    min_loss=min_loss,
    convex=c2 > 0,
    grid_argmin=jnp.where(any_finite, etas[best], jnp.nan),
    grid_min=jnp.where(any_finite, y[best], jnp.nan),
    window_mask=mask,
    num_points=num.astype(jnp.int32),
    windowed=jnp.asarray(window == 'argmin2'),
  )


def _fit(etas, losses, window):
  lead = losses.shape[:-1]
  flat = losses.reshape((-1, losses.shape[-1]))
  fits = jax.vmap(lambda y: _fit_one(etas, y, window))(flat)
  windowed = jnp.asarray(window == 'argmin2')
  fits = jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), fits)
  return fits._replace(windowed=windowed)


_fit_jit = jax.jit(_fit, static_argnums=2)


def fit_quadratic(
  etas: jax.Array, losses: jax.Array, *, window: str = 'full'
) -> QuadraticFit:
  """Fits f(eta) = c0 + c1 eta + c2 eta^2 to each curve by least squares.

  minimise sum_{k in W} (y_k - c0 - c1 eta_k - c2 eta_k^2)^2; vertex
  eta* = -c1 / (2 c2), f(eta*) = c0 - c1^2 / (4 c2). See QuadraticFit for R^2
  and the residuals.

  Args:
    etas: float [K], sorted strictly increasing (the line-search grid).
    losses: float [..., K], one curve per leading index (for example
      LineSearchInfo.losses, [1 + n_eval, K]).
    window: 'full' (every finite point) or 'argmin2' (grid points from the
      first up to twice the measured argmin, at least 3).

  Returns:
    QuadraticFit with leading axes `losses.shape[:-1]`.
  """
  losses_lib.check_choice('window', window, WINDOWS)
  etas = jnp.asarray(etas)
  losses = jnp.asarray(losses)
  if etas.ndim != 1 or losses.shape[-1:] != etas.shape:
    raise ValueError(
      f'etas: shape {etas.shape} does not match losses {losses.shape}'
    )
  if etas.shape[0] < MIN_POINTS:
    raise ValueError(f'etas: a parabola needs >= 3 points, got {etas.shape[0]}')
  dtype = jnp.promote_types(losses.dtype, etas.dtype)
  return _fit_jit(etas.astype(dtype), losses.astype(dtype), window)
