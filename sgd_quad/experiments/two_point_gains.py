"""E8: the accuracy of two-point averages 0.5 (theta_t + theta_{t-k}) against k.

From the base run's checkpoint at t0 (constant LR lam), one branch keeps lam
and tracks a two-point average for every gap in `experiment.two_point_gaps`
together with the config's EMA and SWA (`config.averaging`, BatchNorm
statistics as its `*_bn` fields say; by default averaged with the weights);
a second branch trains at `experiment.lr_factor` * lam (half by default)
without averaging. The noisy-quadratic model predicts that a two-point
average at a gap well above the relaxation time acts like halving the LR.

Reported per model (the last iterate 'raw', every two-point average, EMA,
SWA and 'lr_factor' for the slower branch): the test loss and accuracy at
the last step, and their means over the evaluation steps where every
two-point average is defined (t >= t0 + max k), which averages out some of
the evaluation noise of a small test set; gains are differences from the
last iterate (positive = better). The estimated relaxation time at t0
(`estimate`) says which gaps count as well above it. The figure is
`<workdir>/two_point_gains.png`; the record goes to metrics.jsonl (kind
'two_point_gains').

  python -m sgd_quad.experiments.two_point_gains \
    --config=configs/digits_equivalence.py --workdir=/tmp/two_point
"""

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from sgd_quad.experiments import common, estimate

FIGURE = 'two_point_gains.png'
SLOW = 'lr_factor'


def window_means(curves: dict[str, common.Curve], start: int) -> dict:
  """Mean test loss and accuracy of each curve over steps >= start.

  Only steps at which every curve was evaluated count, so all models are
  averaged over the same steps.
  """
  steps = None
  for c in curves.values():
    s = c.steps[c.steps >= start]
    steps = s if steps is None else np.intersect1d(steps, s)
  out = {}
  for name, c in curves.items():
    keep = np.isin(c.steps, steps)
    out[name] = {
      'window_test_loss': float(np.mean(c.loss[keep])),
      'window_test_accuracy': float(np.mean(c.accuracy[keep])),
    }
  return out


def _plot(path, gaps, table, names, relaxation, lr_factor, spread=None):
  """Two-point averages against k, with the other models as lines.

  `table[name][field]` are the values (means over seeds); `spread`, the same
  layout, their standard deviations, drawn as error bars and bands.
  """
  labels = {'raw': 'last iterate', SLOW: f'LR x{lr_factor:g}, last iterate'}
  fig, axes = common.new_figure(2)
  for ax, field, label in (
    (axes[0], 'window_test_loss', 'test loss'),
    (axes[1], 'window_test_accuracy', 'test accuracy'),
  ):
    points = [f'two_point_k{k}' for k in gaps]
    ax.errorbar(
      gaps,
      [table[n][field] for n in points],
      yerr=None if spread is None else [spread[n][field] for n in points],
      fmt='o-',
      color='C0',
      capsize=3,
      label='two-point 0.5 (theta_t + theta_{t-k})',
    )
    for i, name in enumerate(names):
      color = 'k' if name == 'raw' else f'C{i + 1}'
      value = table[name][field]
      ax.axhline(
        value,
        color=color,
        ls='-' if name == 'raw' else '--',
        lw=1.2,
        label=labels.get(name, name),
      )
      if spread is not None:
        width = spread[name][field]
        ax.axhspan(value - width, value + width, color=color, alpha=0.08)
    ax.axvline(relaxation, color='0.6', ls=':', label='relaxation time (model)')
    ax.set_xscale('log')
    ax.set_xticks(gaps, [str(k) for k in gaps])
    ax.minorticks_off()
    ax.set_xlabel('gap k (steps)')
    ax.set_ylabel(f'{label} (window mean)')
    ax.grid(alpha=0.3)
  axes[0].set_title('two-point averages against the gap')
  axes[1].set_title('(lines: models without a gap)')
  if spread is not None:
    axes[1].set_title('mean +- std over seeds (lines: models without a gap)')
  handles, texts = axes[0].get_legend_handles_labels()
  fig.legend(
    handles,
    texts,
    loc='upper center',
    bbox_to_anchor=(0.5, 0.0),
    ncol=3,
    fontsize=8,
    frameon=False,
  )
  return common.save_figure(fig, path)


def plot_summary(
  config: ml_collections.ConfigDict, summary: Mapping[str, Any], path: str
) -> str:
  """The figure of `run` from a seeds summary: means with +- std.

  Args:
    config: the experiment config.
    summary: scalar name -> a record with `mean` and `std` (`seeds.Summary`).
    path: the PNG to write.

  Returns:
    The path written.
  """
  exp = common.experiment_block(config)
  gaps = sorted(exp.two_point_gaps)
  fields = ('window_test_loss', 'window_test_accuracy')
  names = [
    k[: -len('/window_test_loss')]
    for k in summary
    if k.endswith('/window_test_loss') and not k.startswith('gain/')
  ]
  table = {n: {f: summary[f'{n}/{f}'].mean for f in fields} for n in names}
  spread = {n: {f: summary[f'{n}/{f}'].std for f in fields} for n in names}
  others = [n for n in names if not n.startswith('two_point')]
  relaxation = summary['estimate/relaxation_steps'].mean
  return _plot(
    path, gaps, table, others, relaxation, exp.lr_factor, spread=spread
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs E8 for the config's init_seed and data_seed; returns its scalars.

  Args:
    config: an experiment config (see configs/digits_equivalence.py).
    workdir: where the runs, the figure and the record go.

  Returns:
    Flat scalars `<model>/test_loss`, `<model>/test_accuracy`,
    `<model>/window_test_loss`, `<model>/window_test_accuracy`,
    `gain/<model>/...` (differences from 'raw', positive = better) and the
    estimate at t0.
  """
  exp = common.validated(config)
  t0 = exp.branch_step
  common.prepare_workdir(config, workdir)
  base_dir = common.ensure_base(config, workdir)
  est = estimate.at_branch(config, workdir, base_dir)

  avg_cfg = common.run_config(config).averaging
  avg_cfg.two_point_gaps = tuple(int(k) for k in exp.two_point_gaps)
  avg_cfg.lawa_snapshots = 0
  avg_cfg.multi_point_count = 0
  a_dir = os.path.join(workdir, 'constant')
  results = common.run_branch(
    common.branch_config(config, base_dir, averaging_cfg=avg_cfg), a_dir
  )
  slow_dir = os.path.join(workdir, SLOW)
  slow_lr = exp.lr_factor * est.learning_rate
  slow = common.run_branch(
    common.branch_config(config, base_dir, learning_rate=slow_lr), slow_dir
  )

  names = list(results)
  curves = {n: common.curve(a_dir, n) for n in names}
  curves[SLOW] = common.curve(slow_dir, 'raw')
  finals = {n: common.final(results, n) for n in names}
  finals[SLOW] = common.final(slow, 'raw')
  gaps = sorted(exp.two_point_gaps)
  windows = window_means(curves, t0 + max(gaps))
  table = {n: {**finals[n], **windows[n]} for n in curves}

  scalars = dict(est.as_scalars())
  scalars[f'{SLOW}/learning_rate'] = slow_lr
  for name, fields in table.items():
    for field, value in fields.items():
      scalars[f'{name}/{field}'] = value
      sign = 1.0 if 'accuracy' in field else -1.0
      if name != 'raw':
        gain = sign * (value - table['raw'][field])
        scalars[f'gain/{name}/{field}'] = gain
  others = [n for n in curves if not n.startswith('two_point')]
  figure = _plot(
    os.path.join(workdir, FIGURE),
    gaps,
    table,
    others,
    est.relaxation_steps,
    exp.lr_factor,
  )
  common.write_record(
    workdir, 'two_point_gains', t0 + exp.branch_steps, scalars
  )
  rows = [
    {
      'model': name,
      'test loss': f'{t["test_loss"]:.4f}',
      'test top-1': f'{100 * t["test_accuracy"]:.2f}%',
      'window loss': f'{t["window_test_loss"]:.4f}',
      'window top-1': f'{100 * t["window_test_accuracy"]:.2f}%',
    }
    for name, t in table.items()
  ]
  print(
    f'\nTwo-point gains, t0 = {t0}, lam = {est.learning_rate:g}, '
    f'relaxation time {est.relaxation_steps:.3g} steps '
    f'(window: steps >= {t0 + max(gaps)})\n'
    + common.format_table(rows)
    + f'\nfigure: {figure}',
    flush=True,
  )
  return scalars


if __name__ == '__main__':
  common.launch(run)
