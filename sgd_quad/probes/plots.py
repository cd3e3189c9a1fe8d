"""Figures of the probes: line-search curves and fixed-batch trajectories.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas (no
pyplot, no display, no global backend change) and written crash-safe: to a
temporary file in the target directory, then renamed over the target with
os.replace, so a reader never sees a half-written PNG.
"""

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sgd_quad.probes import fit as fit_lib
from sgd_quad.probes import sweep


def _save(fig: Figure, path: str | os.PathLike) -> None:
  """Writes a figure to `path` atomically (temporary name, then os.replace)."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp'
  )
  try:
    with os.fdopen(fd, 'wb') as f:
      fig.savefig(f, format='png', dpi=120)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _y_limits(curves: np.ndarray, anchors: np.ndarray) -> tuple[float, float]:
  # Diverged steps reach huge losses; keep the interesting range in view.
  finite = curves[np.isfinite(curves)]
  if finite.size == 0:
    return 0.0, 1.0
  top_anchor = np.nanmax(anchors) if np.isfinite(anchors).any() else None
  hi = float(finite.max())
  if top_anchor is not None:
    hi = min(hi, 3.0 * abs(float(top_anchor)) + 1e-12)
  lo = float(finite.min())
  pad = 0.05 * max(hi - lo, 1e-12)
  return min(lo - pad, 0.0), hi + pad


def plot_line_search(
  path: str | os.PathLike,
  etas: Any,
  info: sweep.LineSearchInfo,
  fits: fit_lib.QuadraticFit | None,
  train_lr: float | None,
  labels: Sequence[str],
  *,
  title: str | None = None,
) -> None:
  """Loss vs step size for the direction batch and the held-out batches.

  The x axis is logarithmic, so eta = 0 cannot be drawn on it: each curve's
  value at theta (info.loss_at_zero) is a dotted horizontal line of the same
  colour instead. Fitted parabolas are dashed over their fit window, with the
  predicted argmin marked; for the direction batch (row 0) the Taylor parabola
  L_B + slope eta + 0.5 curvature eta^2 from the exact derivatives is dotted.
  The training learning rate is a vertical grey line.

  Args:
    path: output PNG path (written atomically).
    etas: float [K], the step sizes.
    info: LineSearchInfo (losses [n, K], loss_at_zero [n], slope, curvature).
    fits: QuadraticFit with leading axis n (from `fit_quadratic(etas,
      info.losses)`), or None to draw no parabolas.
    train_lr: learning rate of training at this point, or None.
    labels: n curve names (row 0: the direction batch).
    title: optional figure title.
  """
  etas = np.asarray(etas, dtype=np.float64)
  losses = np.asarray(info.losses, dtype=np.float64)
  at_zero = np.asarray(info.loss_at_zero, dtype=np.float64)
  if losses.ndim != 2 or losses.shape[1] != etas.shape[0]:
    raise ValueError(f'info: losses {losses.shape} do not match etas')
  if len(labels) != losses.shape[0]:
    raise ValueError(
      f'labels: {len(labels)} names for {losses.shape[0]} curves'
    )
  positive = etas > 0
  if not positive.any():
    raise ValueError('etas: a log axis needs at least one step size > 0')

  fig = Figure(figsize=(7.0, 4.5))
  ax = fig.add_subplot()
  ax.set_xscale('log')
  lo_eta, hi_eta = etas[positive].min(), etas.max()
  colors = [f'C{i % 10}' for i in range(losses.shape[0])]

  for i, (label, color) in enumerate(zip(labels, colors, strict=True)):
    ax.plot(
      etas[positive],
      losses[i, positive],
      'o-',
      color=color,
      ms=3,
      lw=1.2,
      label=label,
    )
    ax.axhline(at_zero[i], color=color, ls=':', lw=0.8)
    if fits is None:
      continue
    mask = np.asarray(fits.window_mask[i]) & positive
    if mask.sum() < 1:
      continue
    grid = np.geomspace(etas[mask].min(), etas[mask].max(), 200)
    c0, c1, c2 = np.asarray(fits.coeffs[i], dtype=np.float64)
    ax.plot(grid, c0 + c1 * grid + c2 * grid**2, '--', color=color, lw=1.0)
    argmin = float(fits.argmin[i])
    if bool(fits.convex[i]) and lo_eta <= argmin <= hi_eta:
      ax.plot([argmin], [float(fits.min_loss[i])], 'v', color=color, ms=7)

  curvature = float(info.curvature)
  slope = float(info.slope)
  if np.isfinite(curvature) and np.isfinite(slope):
    grid = np.geomspace(lo_eta, hi_eta, 200)
    taylor = at_zero[0] + slope * grid + 0.5 * curvature * grid**2
    ax.plot(grid, taylor, ':', color='k', lw=1.0, label='Taylor (B)')
  if train_lr is not None:
    ax.axvline(train_lr, color='0.4', lw=1.0, label=f'train LR {train_lr:g}')

  ax.set_xlim(lo_eta / 1.5, hi_eta * 1.5)
  ax.set_ylim(*_y_limits(losses, at_zero))
  ax.set_xlabel('step size eta (log); dotted horizontals: loss at eta = 0')
  ax.set_ylabel('loss at theta - eta d')
  if title:
    ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def plot_trajectory_losses(
  path: str | os.PathLike,
  steps: Any,
  losses: Any,
  labels: Sequence[str],
  *,
  xlabel: str = 'step',
  log_y: bool = False,
  title: str | None = None,
) -> None:
  """Losses of fixed batches along the trajectory (or along a line).

  Args:
    path: output PNG path (written atomically).
    steps: [T] x values (training steps, or interpolation coefficients).
    losses: [n, T], loss of each fixed batch at each x.
    labels: n batch names.
    xlabel: x-axis label.
    log_y: logarithmic loss axis.
    title: optional figure title.
  """
  steps = np.asarray(steps)
  losses = np.asarray(losses, dtype=np.float64)
  if losses.ndim == 1:
    losses = losses[None]
  if losses.shape[-1] != steps.shape[0]:
    raise ValueError(f'losses: shape {losses.shape} does not match steps')
  if len(labels) != losses.shape[0]:
    raise ValueError(
      f'labels: {len(labels)} names for {losses.shape[0]} curves'
    )

  fig = Figure(figsize=(7.0, 4.5))
  ax = fig.add_subplot()
  for row, label in zip(losses, labels, strict=True):
    ax.plot(steps, row, '-', lw=1.0, label=label)
  if log_y:
    ax.set_yscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('loss')
  if title:
    ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, ncol=2 if len(labels) > 6 else 1)
  fig.tight_layout()
  _save(fig, path)
