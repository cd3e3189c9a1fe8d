"""Probes during training: line searches, gradient statistics, curvature.

At each probe step t the trainer calls `run_probes` with theta_t (the
parameters after t updates) before it trains on B_t, the batch of step t.
The probe then measures, for every BatchNorm mode in `probes.bn_modes`:

- the loss of B_t and of fixed probe batches (held-out training batches and
  test batches, chosen once at start-up and replayable) at theta_t - eta g_B
  for a log-spaced grid of eta, with a quadratic fit of every curve (E1, E2);
- the loss of every fixed probe batch at theta_t (its loss along the
  trajectory, E3);
- the cosine of g_B with the mean gradient of M held-out batches, the
  gradient-noise trace, and the cosine between the gradients of B_{t-1} and
  B_t at theta_t (E5);
- the top Hessian eigenvalue of B_t (Lanczos), overall and optionally per
  top-level layer.

Scalars go to the metrics file (kind 'probe'), raw curves to
`<workdir>/probes/step_<t>.npz` and figures to PNG files, each written under
a temporary name and renamed.
"""

import functools
import io
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from etils import epath

from sgd_quad import probes
from sgd_quad.errors import ConfigError

PyTree = Any
Batch = Mapping[str, np.ndarray]


def default_config() -> ml_collections.ConfigDict:
  """The `probes` block, with probing off (no steps)."""
  return ml_collections.ConfigDict(
    {
      # Probe steps: an explicit tuple of global steps, and/or every N steps
      # (0: off). Step t probes theta_t before the update on B_t.
      'steps': (),
      'every': 0,
      # Step sizes: 0 plus `num_etas` log-spaced values in [eta_min, eta_max].
      'eta_min': 1e-3,
      'eta_max': 10.0,
      'num_etas': 32,
      'bn_modes': ('batch',),  # 'batch' and/or 'running'
      'direction': 'gradient',  # or 'update': the optimizer's step / LR
      'objective': 'data',  # or 'train': label smoothing and L2 included
      'fit_window': 'argmin2',  # or 'full'
      'strategy': 'auto',  # 'auto', 'vmap', 'chunked', 'sequential'
      'chunk_size': 0,  # 0: the strategy's default
      'num_heldout_batches': 4,  # fixed held-out training batches
      'num_test_batches': 4,  # fixed test batches
      'heldout_seed': 1,
      'grad_batches': 8,  # M for the gradient statistics (0: off)
      'hessian_iters': 10,  # Lanczos iterations (0: off)
      # Per top-level layer as well: one more Lanczos run per layer. Off by
      # default; second derivatives of convolutions are slow on CPU.
      'hessian_per_layer': False,
      'figures': True,
    }
  )


def probe_steps(cfg: ml_collections.ConfigDict, num_steps: int) -> list[int]:
  """The sorted global steps at which a run probes."""
  steps = {int(s) for s in cfg.steps}
  if cfg.every:
    steps.update(range(0, num_steps, cfg.every))
  return sorted(steps)


def eta_grid(cfg: ml_collections.ConfigDict) -> np.ndarray:
  """0 followed by `num_etas` log-spaced step sizes, float32."""
  grid = np.geomspace(cfg.eta_min, cfg.eta_max, cfg.num_etas)
  return np.concatenate([[0.0], grid]).astype(np.float32)


def validate(cfg: ml_collections.ConfigDict, *, num_steps: int) -> None:
  """Checks the `probes` block; raises ConfigError naming the field."""
  for field in ('steps', 'bn_modes'):
    if not isinstance(cfg[field], (tuple, list)):
      raise ConfigError(
        f'probes.{field}', f'got {cfg[field]!r}; allowed: a tuple'
      )
  for step in cfg.steps:
    if not isinstance(step, int) or not 0 <= step < num_steps:
      raise ConfigError(
        'probes.steps',
        f'step {step!r} is outside the run; allowed: integers in '
        f'[0, {num_steps})',
      )
  _check_int(cfg, 'every', 0)
  _check_int(cfg, 'num_etas', 1)
  for field in ('num_heldout_batches', 'num_test_batches', 'grad_batches'):
    _check_int(cfg, field, 0)
  _check_int(cfg, 'hessian_iters', 0)
  _check_int(cfg, 'chunk_size', 0)
  _check_int(cfg, 'heldout_seed', 0)
  if not isinstance(cfg.figures, bool):
    raise ConfigError(
      'probes.figures', f'got {cfg.figures!r}; allowed: True or False'
    )
  if cfg.grad_batches == 1:
    raise ConfigError('probes.grad_batches', 'allowed: 0 (off) or >= 2')
  lo, hi = cfg.eta_min, cfg.eta_max
  numbers = all(
    isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)
  )
  if not (numbers and math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
    raise ConfigError(
      'probes.eta_min',
      f'grid [{lo}, {hi}] is not valid; allowed: finite 0 < eta_min < eta_max',
    )
  for field, allowed in (
    ('direction', ('gradient', 'update')),
    ('objective', probes.OBJECTIVES),
    ('fit_window', ('full', 'argmin2')),
    ('strategy', ('auto', *probes.STRATEGIES)),
  ):
    if cfg[field] not in allowed:
      raise ConfigError(
        f'probes.{field}',
        f'unknown value {cfg[field]!r}; allowed: {", ".join(allowed)}',
      )
  if not cfg.bn_modes or any(m not in probes.BN_MODES for m in cfg.bn_modes):
    raise ConfigError(
      'probes.bn_modes',
      f'got {tuple(cfg.bn_modes)}; allowed: a non-empty tuple of '
      f'{", ".join(probes.BN_MODES)}',
    )


def _check_int(cfg, field: str, minimum: int):
  value = cfg[field]
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(
      f'probes.{field}', f'got {value!r}; allowed: an integer >= {minimum}'
    )


class ProbeBatches(NamedTuple):
  """The fixed probe batches of a run, chosen once at start-up.

  Attributes:
    names: one name per batch, e.g. 'heldout_0', 'test_1'.
    batches: the batches, in the order of `names`.
    grad_batches: the M held-out batches of the gradient statistics.
  """

  names: list[str]
  batches: list[Batch]
  grad_batches: list[Batch]


def choose_batches(cfg, datasets, batch_size: int) -> ProbeBatches:
  """Picks the fixed probe batches: held-out training and test batches.

  Held-out training batches are random training examples (seed
  `heldout_seed`), without augmentation; test batches are the first test
  batches in the eval stream's fixed order. Both are replayable from the
  config alone.
  """
  rng = np.random.default_rng(cfg.heldout_seed)
  count = cfg.num_heldout_batches + cfg.grad_batches
  order = rng.permutation(datasets.info.num_train)
  need = count * batch_size
  order = np.resize(order, need)  # repeats only for tiny training sets
  chunks = [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]
  train = [
    datasets.train.batch_from_indices(c, epoch=0, augment=False) for c in chunks
  ]
  heldout = train[: cfg.num_heldout_batches]
  tests = [
    datasets.test.batch(k)
    for k in range(min(cfg.num_test_batches, datasets.test.num_batches))
  ]
  names = [f'heldout_{i}' for i in range(len(heldout))]
  names += [f'test_{i}' for i in range(len(tests))]
  return ProbeBatches(names, heldout + tests, train[cfg.num_heldout_batches :])


def _atomic_savez(path: epath.Path, **arrays):
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  tmp = path.parent / f'.{path.name}.tmp'
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)


def run_probes(
  *,
  cfg: ml_collections.ConfigDict,
  model: Any,
  params: PyTree,
  batch_stats: PyTree,
  step: int,
  direction_batch: Batch,
  previous_batch: Batch | None,
  fixed: ProbeBatches,
  to_device: Callable[[Batch], Batch],
  train_lr: float,
  update_direction: PyTree | None,
  out_dir: epath.Path | None,
) -> dict[str, float]:
  """Runs every probe at one step and returns its scalar summaries.

  Args:
    cfg: the `probes` block.
    model: the Linen model.
    params: theta_t.
    batch_stats: the running statistics at step t.
    step: t.
    direction_batch: B_t (host arrays).
    previous_batch: B_{t-1}, or None at step 0.
    fixed: the run's fixed probe batches.
    to_device: turns a host batch into a (sharded) device batch.
    train_lr: the training LR at this step, marked in the figure.
    update_direction: the optimizer's update / -LR when `direction` is
      'update', else None.
    out_dir: where curves and figures go (None: not written).

  Returns:
    Scalars named `probe/<bn_mode>/<curve>/<quantity>` and `probe/grad/...`.
  """
  etas = eta_grid(cfg)
  b = to_device(direction_batch)
  fixed_dev = [to_device(x) for x in fixed.batches]
  labels = ['direction', *fixed.names]
  scalars, arrays = {}, {'etas': etas}
  chunk = cfg.chunk_size or None
  for bn_mode in cfg.bn_modes:
    info = probes.line_search(
      model,
      params,
      batch_stats,
      b,
      fixed_dev,
      etas,
      bn_mode=bn_mode,
      direction=update_direction,
      objective=cfg.objective,
      strategy=cfg.strategy,
      chunk_size=chunk,
    )
    fits = probes.fit_quadratic(etas, info.losses, window=cfg.fit_window)
    info, fits = jax.device_get((info, fits))
    arrays[f'{bn_mode}/losses'] = info.losses
    arrays[f'{bn_mode}/coeffs'] = fits.coeffs
    arrays[f'{bn_mode}/r2'] = fits.r2
    prefix = f'probe/{bn_mode}'
    scalars[f'{prefix}/direction/slope'] = float(info.slope)
    scalars[f'{prefix}/direction/curvature'] = float(info.curvature)
    scalars[f'{prefix}/direction/grad_norm'] = float(info.grad_norm)
    for i, label in enumerate(labels):
      name = f'{prefix}/{label}'
      scalars[f'{name}/loss'] = float(info.loss_at_zero[i])
      scalars[f'{name}/min_loss'] = float(fits.grid_min[i])
      scalars[f'{name}/argmin'] = float(fits.grid_argmin[i])
      scalars[f'{name}/fit_argmin'] = float(fits.argmin[i])
      scalars[f'{name}/fit_r2'] = float(fits.r2[i])
      scalars[f'{name}/fit_curvature'] = float(2 * fits.coeffs[i, 2])
    if cfg.figures and out_dir is not None:
      probes.plot_line_search(
        out_dir / f'step_{step}_{bn_mode}.png',
        etas,
        info,
        fits,
        train_lr,
        labels,
        title=f'step {step}, BatchNorm {bn_mode} statistics',
      )

  bn_mode = cfg.bn_modes[0]
  if cfg.grad_batches:
    stats = probes.gradient_statistics(
      model,
      params,
      batch_stats,
      [to_device(x) for x in fixed.grad_batches],
      bn_mode=bn_mode,
      direction_batch=b,
    )
    scalars['probe/grad/cos_to_mean'] = float(stats.direction_cos)
    scalars['probe/grad/noise_trace'] = float(stats.noise_trace)
    scalars['probe/grad/mean_grad_norm'] = float(stats.mean_grad_norm)
  if previous_batch is not None:
    g_prev = _gradient(
      model, params, batch_stats, to_device(previous_batch), bn_mode
    )
    g_now = _gradient(model, params, batch_stats, b, bn_mode)
    scalars['probe/grad/cos_successive'] = float(probes.cosine(g_prev, g_now))
  if cfg.hessian_iters:
    curv = probes.batch_curvature(
      model,
      params,
      batch_stats,
      b,
      key=jax.random.key(step),
      bn_mode=bn_mode,
      num_iters=cfg.hessian_iters,
      group_by='top' if cfg.hessian_per_layer else None,
    )
    curv = jax.device_get(curv)
    scalars['probe/hessian/top'] = float(curv.overall.eigenvalue)
    for layer, eig in curv.per_layer.items():
      scalars[f'probe/hessian/{layer}'] = float(eig.eigenvalue)

  if out_dir is not None:
    _atomic_savez(out_dir / f'step_{step}.npz', **arrays)
  return scalars


@functools.partial(jax.jit, static_argnums=(0, 4))
def _gradient(model, params, batch_stats, batch, bn_mode):
  loss_fn = probes.make_loss_fn(model, batch_stats, bn_mode=bn_mode)
  return jax.grad(loss_fn)(params, batch)


def plot_trajectory(records: list[dict], out: epath.Path):
  """Figure of every fixed probe batch's loss along the trajectory (E3)."""
  keys = sorted(
    k
    for k in records[0]
    if k.endswith('/loss') and '/direction/' not in k and k.startswith('probe/')
  )
  if not keys or len(records) < 2:
    return
  steps = np.array([r['step'] for r in records])
  losses = np.array([[r.get(k, np.nan) for r in records] for k in keys])
  labels = [k[len('probe/') : -len('/loss')] for k in keys]
  probes.plot_trajectory_losses(
    out / 'trajectory.png', steps, losses, labels, xlabel='step'
  )
