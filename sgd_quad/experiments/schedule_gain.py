"""E9: the averaging gain at a constant learning rate and after a decay.

From the base run's checkpoint at t0 two branches track the same averaged
models (`config.averaging`, started at t0; BatchNorm statistics as its
`*_bn` fields say): one keeps the constant LR lam, the other decays it from
lam at t0 to 0 at t0 + T (`experiment.decay`: 'cosine' or 'linear', written
as a per-step `.npy` schedule). The model predicts a large gain from
averaging at the constant LR, where the iterate fluctuates, and a small one
after the decay, which already removed most of the fluctuation.

Reported per branch and model: final test loss and accuracy, and the gain
of each averaged model over that branch's last iterate (loss: raw minus
averaged; accuracy: averaged minus raw; positive = averaging helps). The
figure `<workdir>/schedule_gain.png` shows the test loss of both branches'
models over the steps; the record goes to metrics.jsonl (kind
'schedule_gain').

  python -m sgd_quad.experiments.schedule_gain \
    --config=configs/digits_equivalence.py --workdir=/tmp/schedule_gain
"""

import os

import ml_collections
import numpy as np

from sgd_quad import theory
from sgd_quad.experiments import common

FIGURE = 'schedule_gain.png'
BRANCHES = ('constant', 'decay')


def decay_schedule(name: str, learning_rate: float, num_steps: int):
  """(T,) LRs from `learning_rate` at the branch to 0 after T steps.

  Args:
    name: 'cosine' (0.5 lam (1 + cos(pi t / T))) or 'linear' (lam (1 - t/T)).
    learning_rate: lam.
    num_steps: T.

  Returns:
    float64 array; entry t is the LR of branch update t + 1.
  """
  t = np.arange(num_steps) / num_steps
  if name == 'cosine':
    return 0.5 * learning_rate * (1 + np.cos(np.pi * t))
  if name == 'linear':
    return learning_rate * (1 - t)
  raise ValueError(f'decay must be cosine or linear, got {name!r}')


def _plot(path, curves, names, t0):
  fig, axes = common.new_figure(2)
  for ax, branch in zip(axes, BRANCHES, strict=True):
    for i, name in enumerate(names):
      c = curves[branch][name]
      ax.plot(
        c.steps,
        c.loss,
        color='k' if name == 'raw' else f'C{i}',
        lw=1.2 if name == 'raw' else 1.8,
        label=name,
      )
    ax.set_title(f'{branch} LR from step {t0}')
    ax.set_xlabel('step')
    ax.set_ylabel('test loss')
    ax.grid(alpha=0.3)
  lo = min(np.min(c.loss) for b in curves.values() for c in b.values())
  hi = max(np.max(c.loss) for b in curves.values() for c in b.values())
  for ax in axes:
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
  axes[0].legend(fontsize=7)
  return common.save_figure(fig, path)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs E9 for the config's init_seed and data_seed; returns its scalars.

  Args:
    config: an experiment config (see configs/digits_equivalence.py).
    workdir: where the runs, the schedule, the figure and the record go.

  Returns:
    Flat scalars `<branch>/<model>/test_loss`, `.../test_accuracy` and
    `<branch>/gain/<model>/test_loss`, `.../test_accuracy`, for branch
    'constant' and 'decay'.
  """
  exp = common.validated(config)
  t0, num = exp.branch_step, exp.branch_steps
  common.prepare_workdir(config, workdir)
  base_dir = common.ensure_base(config, workdir)
  lr = float(config.optimizer.learning_rate)
  path = os.path.join(workdir, f'schedule_{exp.decay}.npy')
  theory.write_schedule(
    path, decay_schedule(exp.decay, lr, num), base_lr=lr, branch_step=t0
  )
  avg_cfg = common.run_config(config).averaging
  results, curves = {}, {}
  for branch, schedule in zip(BRANCHES, (None, path), strict=True):
    run_dir = os.path.join(workdir, branch)
    cfg = common.branch_config(
      config, base_dir, averaging_cfg=avg_cfg, schedule_file=schedule
    )
    results[branch] = common.run_branch(cfg, run_dir)
    curves[branch] = {n: common.curve(run_dir, n) for n in results[branch]}

  names = [n for n in results['constant'] if n in results['decay']]
  scalars, rows = {}, []
  for branch in BRANCHES:
    raw = common.final(results[branch], 'raw')
    for name in names:
      this = common.final(results[branch], name)
      for field, value in this.items():
        scalars[f'{branch}/{name}/{field}'] = value
      if name == 'raw':
        continue
      gain_loss = raw['test_loss'] - this['test_loss']
      gain_acc = this['test_accuracy'] - raw['test_accuracy']
      scalars[f'{branch}/gain/{name}/test_loss'] = gain_loss
      scalars[f'{branch}/gain/{name}/test_accuracy'] = gain_acc
      rows.append(
        {
          'branch': branch,
          'model': name,
          'raw loss': f'{raw["test_loss"]:.4f}',
          'avg loss': f'{this["test_loss"]:.4f}',
          'loss gain': f'{gain_loss:+.4f}',
          'top-1 gain': f'{100 * gain_acc:+.2f}%',
        }
      )
  figure = _plot(os.path.join(workdir, FIGURE), curves, names, t0)
  common.write_record(workdir, 'schedule_gain', t0 + num, scalars)
  print(
    f'\nAveraging gain, constant LR {lr:g} vs {exp.decay} decay to 0 over '
    f'{num} steps from step {t0}\n'
    + common.format_table(rows)
    + f'\nfigure: {figure}',
    flush=True,
  )
  return scalars


if __name__ == '__main__':
  common.launch(run)
