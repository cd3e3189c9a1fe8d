"""E4: the distance between two trajectories branched from one checkpoint.

From the base run's checkpoint at t0, for each LR factor f in
`experiment.distance_lr_factors`, three copies of the state train at f * lam:
x, y_same fed the same batches as x (the base run's `data_seed`), and y_diff
fed another batch order (`data_seed + 1`). Both y's may start from a kicked
copy of the weights: Gaussian noise of norm `experiment.perturbation` *
|theta| (0: none, so y_same coincides with x step for step on a
deterministic backend). The model predicts that trajectories fed the same
batches contract, as (I - lam H)^t, and that ones fed different batches
plateau at a distance that grows with lam.

This runs its own short loop over the trainer's jitted train step (built
once per LR factor by `trainer.build` and shared by the three states; no
checkpoints or evaluations), measuring |theta_x - theta_y| over the `params`
collection every `experiment.distance_every` steps, on the device. Records
of kind 'distance' (one per measurement) and a summary of kind
'distances' go to `<workdir>/metrics.jsonl`; the figure is
`<workdir>/distances.png`.

  python -m sgd_quad.experiments.distances \
    --config=configs/digits_equivalence.py --workdir=/tmp/distances
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgd_quad import config_lib, metrics, probes, trainer
from sgd_quad.experiments import common

FIGURE = 'distances.png'
ORDERS = ('same', 'different')


@jax.jit
def _distance(a, b):
  """(|a - b|, |a|) over the leaves of two parameter trees."""
  diff = jax.tree.map(jnp.subtract, a, b)
  return probes.tree_norm(diff), probes.tree_norm(a)


@functools.partial(jax.jit, static_argnums=(2,))
def _kick(params, key, scale):
  """params + n, n Gaussian with |n| = scale |params|."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  noise = [
    jax.random.normal(k, x.shape, x.dtype)
    for k, x in zip(keys, leaves, strict=True)
  ]
  noise = jax.tree.unflatten(tree, noise)
  factor = scale * probes.tree_norm(params) / probes.tree_norm(noise)
  return jax.tree.map(lambda x, n: x + factor * n, params, noise)


def _to_global(setup, batch):
  rows = NamedSharding(setup.mesh, P('data'))
  return {
    k: jax.make_array_from_process_local_data(rows, v) for k, v in batch.items()
  }


def trajectories(
  config: ml_collections.ConfigDict,
  base_dir: str,
  *,
  lr_factor: float,
  writer: metrics.MetricWriter | None = None,
) -> dict[str, np.ndarray]:
  """Trains x, y_same and y_diff from t0 and measures their distances.

  Args:
    config: the experiment config.
    base_dir: the base run's workdir (a checkpoint at t0).
    lr_factor: f; the three states train at f times the base LR.
    writer: where the 'distance' records go (None: nowhere).

  Returns:
    {'steps': int [n] (global steps, t0 first), 'same': float [n] and
    'different': float [n] distances |theta_x - theta_y|, 'norm': float
    [n] |theta_x|}.
  """
  exp = common.experiment_block(config)
  t0, every = exp.branch_step, exp.distance_every
  lr = config.optimizer.learning_rate * lr_factor
  cfg = common.branch_config(config, base_dir, learning_rate=lr)
  other = common.branch_config(
    config, base_dir, learning_rate=lr, data_seed=cfg.data_seed + 1
  )
  for c in (cfg, other):
    config_lib.validate(c, device_count=jax.device_count(), process_count=1)
  setup = trainer.build(cfg, first_step=t0)
  # Only the other batch order is needed; the jitted step is shared.
  other_data = trainer.build(other, first_step=t0).datasets

  x = trainer.branch_state(setup, base_dir, t0)
  ys = {order: trainer.branch_state(setup, base_dir, t0) for order in ORDERS}
  if exp.perturbation:
    for i, order in enumerate(ORDERS):
      key = jax.random.key(i)
      kicked = _kick(ys[order].params, key, float(exp.perturbation))
      ys[order] = ys[order].replace(params=kicked)
  streams = {'same': setup.datasets.train, 'different': other_data.train}

  out = {'steps': [], 'same': [], 'different': [], 'norm': []}

  def measure(step):
    scalars = {}
    for order in ORDERS:
      dist, norm = jax.device_get(_distance(x.params, ys[order].params))
      out[order].append(float(dist))
      scalars[f'lr{lr_factor:g}/{order}/distance'] = float(dist)
      scalars[f'lr{lr_factor:g}/{order}/relative'] = float(dist / norm)
    out['steps'].append(step)
    out['norm'].append(float(norm))
    if writer is not None:
      writer.write(step, 'distance', scalars)

  measure(t0)
  logging.info('Distances at LR %g: steps %d-%d.', lr, t0, cfg.num_steps)
  for step in range(t0, cfg.num_steps):
    batch = _to_global(setup, streams['same'].batch(step))
    x, _ = setup.train_step(x, batch)
    ys['same'], _ = setup.train_step(ys['same'], batch)
    other_batch = _to_global(setup, streams['different'].batch(step))
    ys['different'], _ = setup.train_step(ys['different'], other_batch)
    if (step + 1 - t0) % every == 0 or step + 1 == cfg.num_steps:
      measure(step + 1)
  return {k: np.asarray(v) for k, v in out.items()}


def _plot(path, runs, t0):
  fig, axes = common.new_figure(1, width=6.5)
  ax = axes[0]
  for i, (factor, r) in enumerate(runs.items()):
    for order, ls in zip(ORDERS, ('--', '-'), strict=True):
      d = r[order]
      label = f'LR x{factor:g}, {order} batch order'
      if not np.any(d > 0):
        label += ' (identical: 0)'
      ax.plot(
        r['steps'] - t0,
        np.where(d > 0, d, np.nan),
        color=f'C{i}',
        ls=ls,
        label=label,
      )
  ax.set_yscale('log')
  ax.set_xlabel('steps after the branch')
  ax.set_ylabel('|theta_x - theta_y|')
  ax.set_title(f'distance between branches from step {t0}')
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=7)
  return common.save_figure(fig, path)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs E4 for the config's init_seed and data_seed; returns a summary.

  Args:
    config: an experiment config (see configs/digits_equivalence.py).
    workdir: where the base run (unless given), the figure and the records
      go.

  Returns:
    Per LR factor f and order: `lr<f>/<order>/final` (distance at t0 + T),
    `lr<f>/<order>/plateau` (mean over the last quarter of the
    measurements) and `lr<f>/<order>/relative_plateau` (divided by
    |theta|).
  """
  exp = common.validated(config)
  common.prepare_workdir(config, workdir)
  base_dir = common.ensure_base(config, workdir)
  writer = metrics.MetricWriter(workdir)
  runs = {}
  try:
    for factor in exp.distance_lr_factors:
      runs[factor] = trajectories(
        config, base_dir, lr_factor=factor, writer=writer
      )
      writer.flush()
  finally:
    writer.close()

  scalars, rows = {}, []
  for factor, r in runs.items():
    tail = slice(-max(1, len(r['steps']) // 4), None)
    for order in ORDERS:
      d = r[order]
      name = f'lr{factor:g}/{order}'
      plateau = float(np.mean(d[tail]))
      relative = float(np.mean(d[tail] / r['norm'][tail]))
      scalars.update(
        {
          f'{name}/final': float(d[-1]),
          f'{name}/plateau': plateau,
          f'{name}/relative_plateau': relative,
        }
      )
      rows.append(
        {
          'LR factor': f'{factor:g}',
          'batch order': order,
          'start': f'{d[0]:.4g}',
          'final': f'{d[-1]:.4g}',
          'plateau': f'{plateau:.4g}',
          'relative': f'{relative:.3g}',
        }
      )
  figure = _plot(os.path.join(workdir, FIGURE), runs, exp.branch_step)
  end = exp.branch_step + exp.branch_steps
  common.write_record(workdir, 'distances', end, scalars)
  print(
    f'\nTrajectory distances from step {exp.branch_step}, perturbation '
    f'{exp.perturbation:g}\n'
    + common.format_table(rows)
    + f'\nfigure: {figure}',
    flush=True,
  )
  return scalars


if __name__ == '__main__':
  common.launch(run)
