"""E6/E7: iterate averaging against its equivalent learning-rate schedule.

One command: train (or reuse) a base run at a constant LR lam to the branch
step t0; estimate a noisy-quadratic spectrum there from probes
(`estimate`, single effective direction by default); then branch

- (A) lam kept constant, with the config's averaged models tracked (EMA, SWA,
  two-point, LAWA: `config.averaging`, started at t0);
- (B) one branch per averaged model matched (`experiment.match`, default all
  that the theory models), without averaging, whose per-step LR is
  `theory.match_schedule` for that averaging rule (momentum form 'trace',
  as optax's SGD rescales its whole buffer with the LR), written as the
  `.npy` array the trainer's 'file' schedule reads.

The result compares A's averaged model with B's raw model at every common
evaluation step after t0: the discrepancy is the mean absolute difference of
their test losses (and accuracies) over that overlap, and the averaging
effect the same mean between A's averaged and A's raw model, i.e. the
discrepancy a B that kept lam would have. A two-point average at gap k is
compared from t0 + k on: the trainer defines it only there (the theory's
rule pairs x_t with x_t0 before, and its schedule's first k steps match
that). Averaged models use the BatchNorm mode of `config.averaging`
(`*_bn`, by default statistics averaged with the weights); B's raw model
uses its live running statistics. The figure (`<workdir>/equivalence.png`)
overlays A's averaged curves (solid) and B's raw curves (dashed), with B's
schedules; the numbers go to `<workdir>/metrics.jsonl` (kind
'equivalence') and are printed.

  python -m sgd_quad.experiments.equivalence \
    --config=configs/digits_equivalence.py --workdir=/tmp/equivalence
"""

import os

import ml_collections
import numpy as np
from absl import logging

from sgd_quad import theory
from sgd_quad.errors import ConfigError
from sgd_quad.experiments import common, estimate

FIGURE = 'equivalence.png'


def modelled_rules(
  averaging_cfg: ml_collections.ConfigDict, branch_step: int
) -> dict[str, theory.AveragingRule]:
  """The theory's rule for each averaged model the block asks for, by name.

  Steps are counted from the branch point t0, where the trainer starts the
  averagers of a branched run. EMAs with warmup or debiasing are left out
  (the theory does not model them), as are multi-point averages.

  Args:
    averaging_cfg: a `config.averaging` block.
    branch_step: t0.

  Returns:
    Averaged-model name (as the trainer names it) -> rule.
  """
  cfg = averaging_cfg
  shift = lambda start: max(0, int(start) - branch_step)
  rules = {}
  if cfg.ema_warmup or cfg.ema_debias:
    logging.warning('EMA warmup and debiasing are not modelled: no match.')
  else:
    for decay in cfg.ema_decays:
      rules[f'ema_{float(decay)!r}'] = theory.EmaRule(
        float(decay), start_step=shift(cfg.ema_start), period=cfg.ema_period
      )
  if cfg.swa:
    rules['swa'] = theory.SwaRule(
      start_step=shift(cfg.swa_start), period=cfg.swa_period
    )
  if cfg.lawa_snapshots:
    m, c = cfg.lawa_snapshots, cfg.lawa_period
    rules[f'lawa_{m}x{c}'] = theory.LawaRule(m, period=c)
  for k in cfg.two_point_gaps:
    rules[f'two_point_k{k}'] = theory.TwoPointRule(int(k))
  return rules


def discrepancy(a: common.Curve, b: common.Curve) -> dict[str, float]:
  """Mean absolute differences of two curves over their common steps.

  Args:
    a: one curve.
    b: another.

  Returns:
    {'loss': mean |a.loss - b.loss|, 'accuracy': the same for accuracy,
    'overlap': the number of common steps}; NaN means when there are none.
  """
  common_steps, ia, ib = np.intersect1d(a.steps, b.steps, return_indices=True)
  if not len(common_steps):
    return {'loss': np.nan, 'accuracy': np.nan, 'overlap': 0}
  return {
    'loss': float(np.mean(np.abs(a.loss[ia] - b.loss[ib]))),
    'accuracy': float(np.mean(np.abs(a.accuracy[ia] - b.accuracy[ib]))),
    'overlap': len(common_steps),
  }


def _plot(path, base, a_raw, pairs, schedules, lr, t0):
  """Test loss, test accuracy and B's LR schedules against the step."""
  fig, (ax_loss, ax_acc, ax_lr) = common.new_figure(3)
  colors = [f'C{i}' for i in range(len(pairs))]
  for ax, field in ((ax_loss, 'loss'), (ax_acc, 'accuracy')):
    ax.plot(base.steps, getattr(base, field), color='0.6', lw=1, label='base')
    ax.plot(
      a_raw.steps, getattr(a_raw, field), color='k', lw=1, label='A raw (lam)'
    )
    for (name, a, b, gap), color in zip(pairs, colors, strict=True):
      ax.plot(a.steps, getattr(a, field), color=color, lw=2, label=f'A {name}')
      ax.plot(
        b.steps,
        getattr(b, field),
        color=color,
        lw=1.5,
        ls='--',
        label=f'B matched to {name} (|dL| {gap["loss"]:.4f})',
      )
    ax.axvline(t0, color='0.8', lw=0.8)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  ax_loss.set_ylabel('test loss')
  ax_loss.set_title('test loss: A averaged (solid) vs B raw (dashed)')
  ax_acc.set_ylabel('test accuracy')
  ax_acc.set_title('test accuracy')
  handles, labels = ax_loss.get_legend_handles_labels()
  fig.legend(
    handles,
    labels,
    loc='upper center',
    bbox_to_anchor=(0.5, 0.0),
    ncol=min(4, len(labels)),
    fontsize=8,
    frameon=False,
  )
  # Zoom on the branches: the base run's start would flatten them.
  after = [c for _, a, b, _ in pairs for c in (a, b)] + [a_raw]
  for ax, field in ((ax_loss, 'loss'), (ax_acc, 'accuracy')):
    values = np.concatenate([getattr(c, field) for c in after])
    if values.size:
      lo, hi = np.min(values), np.max(values)
      pad = 0.1 * (hi - lo) + 1e-6
      ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(t0 - 0.1 * (after[-1].steps.max(initial=t0) - t0), None)
  for (name, *_), color in zip(pairs, colors, strict=True):
    lrs = schedules[name]
    ax_lr.plot(t0 + np.arange(len(lrs)), lrs, color=color, label=f'B {name}')
  ax_lr.axhline(lr, color='k', lw=1, label='A (constant)')
  ax_lr.set_yscale('log')
  ax_lr.set_xlabel('step')
  ax_lr.set_ylabel('learning rate')
  ax_lr.set_title('equivalent schedules (theory.match_schedule)')
  ax_lr.grid(alpha=0.3, which='both')
  ax_lr.legend(fontsize=7)
  return common.save_figure(fig, path)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs the equivalence experiment; returns its scalars.

  Args:
    config: an experiment config (see configs/digits_equivalence.py).
    workdir: where the base run (unless `experiment.base_workdir` is set),
      branch A, the B branches, their schedules, the figure and the record
      go.

  Returns:
    Flat scalars: per matched model `<name>/loss_discrepancy`,
    `<name>/accuracy_discrepancy`, `<name>/averaging_effect`, the final test
    metrics of A's models and B's, and the estimate.
  """
  exp = common.validated(config)
  t0, num = exp.branch_step, exp.branch_steps
  avg_cfg = common.run_config(config).averaging
  rules = modelled_rules(avg_cfg, t0)
  tracked = common.averaged_model_names(avg_cfg, config)
  names = list(exp.match) or [n for n in tracked if n in rules]
  for name in names:
    if name not in rules or name not in tracked:
      raise ConfigError(
        'experiment.match',
        f'{name!r} is not a modelled averaged model of this config; '
        f'allowed: {", ".join(n for n in tracked if n in rules)}',
      )
  if not names:
    raise ConfigError('averaging', 'no averaged model to match; add one')

  common.prepare_workdir(config, workdir)
  base_dir = common.ensure_base(config, workdir)
  est = estimate.at_branch(config, workdir, base_dir)
  spec = estimate.spectrum(est, exp.spectrum)
  lr, mu = est.learning_rate, est.momentum

  a_dir = os.path.join(workdir, 'A')
  a_results = common.run_branch(
    common.branch_config(config, base_dir, averaging_cfg=avg_cfg), a_dir
  )
  schedules, b_results, clipped = {}, {}, {}
  for name in names:
    matched = theory.match_schedule(
      rules[name],
      spec,
      lr,
      num,
      momentum=mu,
      momentum_form=estimate.momentum_form(mu),
    )
    path = os.path.join(workdir, f'schedule_{name}.npy')
    theory.write_schedule(path, matched, base_lr=lr, branch_step=t0)
    schedules[name] = matched.learning_rates
    clipped[name] = float(np.mean(matched.clipped))
    b_results[name] = common.run_branch(
      common.branch_config(config, base_dir, schedule_file=path),
      os.path.join(workdir, f'B_{name}'),
    )

  a_raw = common.curve(a_dir, 'raw')
  scalars = {**est.as_scalars(), **_prefixed('A/raw', a_results['raw'])}
  pairs, rows = [], []
  for name in names:
    a = common.curve(a_dir, name)
    b = common.curve(os.path.join(workdir, f'B_{name}'), 'raw')
    gap = discrepancy(a, b)
    effect = discrepancy(a, a_raw)
    pairs.append((name, a, b, gap))
    lrs = schedules[name]
    scalars.update(
      {
        f'{name}/loss_discrepancy': gap['loss'],
        f'{name}/accuracy_discrepancy': gap['accuracy'],
        f'{name}/overlap_evals': gap['overlap'],
        f'{name}/averaging_effect': effect['loss'],
        f'{name}/averaging_effect_accuracy': effect['accuracy'],
        f'{name}/final_lr_ratio': float(lrs[-1] / lr),
        f'{name}/clipped_fraction': clipped[name],
        **_prefixed(f'A/{name}', a_results[name]),
        **_prefixed(f'B/{name}', b_results[name]['raw']),
      }
    )
    rows.append(
      {
        'matched to': name,
        'A avg loss': f'{a_results[name]["test_loss"]:.4f}',
        'B raw loss': f'{b_results[name]["raw"]["test_loss"]:.4f}',
        'mean |dL|': f'{gap["loss"]:.4f}',
        'mean |dAcc|': f'{100 * gap["accuracy"]:.2f}%',
        'effect |A avg - A raw|': f'{effect["loss"]:.4f}',
        'evals': gap['overlap'],
        'final LR / lam': f'{lrs[-1] / lr:.3g}',
      }
    )
  figure = _plot(
    os.path.join(workdir, FIGURE),
    common.curve(base_dir, 'raw'),
    a_raw,
    pairs,
    schedules,
    lr,
    t0,
  )
  common.write_record(workdir, 'equivalence', t0 + num, scalars)
  print(
    f'\nEquivalence at t0 = {t0}, {num} branch steps, lam = {lr:g}, '
    f'mu = {mu:g}; spectrum {exp.spectrum}: kappa = '
    f'{est.curvature_along_gradient:.4g}, tr Cov = {est.noise_trace:.4g}, '
    f'relaxation {est.relaxation_steps:.3g} steps, top eigenvalue '
    f'{est.top_eigenvalue:.4g}\n'
    + common.format_table(rows)
    + f'\nfigure: {figure}',
    flush=True,
  )
  return scalars


def _prefixed(prefix: str, results: dict[str, float]) -> dict[str, float]:
  return {f'{prefix}/{k}': float(v) for k, v in results.items()}


if __name__ == '__main__':
  common.launch(run)
