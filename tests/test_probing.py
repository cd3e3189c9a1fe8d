"""Probes inside training, and the shape of a real mini-batch loss curve."""

import os

import numpy as np
import pytest
from conftest import tiny_config

from sgd_quad import metrics, probes, probing, trainer
from sgd_quad.errors import ConfigError


def test_probes_in_training_write_metrics_curves_and_figures(
  tmp_path, digits_dir
):
  config = tiny_config(
    digits_dir,
    **{
      'num_steps': 20,
      'averaging.two_point_gaps': (),
      'probes.steps': (0, 10),
      'probes.num_etas': 8,
      'probes.num_heldout_batches': 1,
      'probes.num_test_batches': 1,
      'probes.grad_batches': 2,
      'probes.hessian_iters': 2,
    },
  )
  workdir = os.fspath(tmp_path / 'run')
  trainer.train_and_evaluate(config, workdir)

  records = metrics.read_metrics(workdir, 'probe')
  assert [r['step'] for r in records] == [0, 10]
  last = records[-1]
  for curve in ('direction', 'heldout_0', 'test_0'):
    assert 0.0 <= last[f'probe/batch/{curve}/fit_r2'] <= 1.0
    assert last[f'probe/batch/{curve}/min_loss'] <= (
      last[f'probe/batch/{curve}/loss'] + 1e-6
    )
  # Slope of the direction batch's own curve is -|g_B|^2.
  assert last['probe/batch/direction/slope'] == pytest.approx(
    -(last['probe/batch/direction/grad_norm'] ** 2), rel=1e-4
  )
  assert np.isfinite(last['probe/hessian/top'])
  assert -1.0 <= last['probe/grad/cos_successive'] <= 1.0
  assert last['probe/grad/noise_trace'] > 0

  out = tmp_path / 'run' / 'probes'
  curves = np.load(out / 'step_10.npz')
  assert curves['batch/losses'].shape == (3, 9)
  assert curves['etas'][0] == 0.0
  assert (out / 'step_10_batch.png').stat().st_size > 0
  assert (out / 'trajectory.png').stat().st_size > 0
  assert not list(out.glob('.*tmp'))


def test_digits_resnet_curve_is_a_convex_parabola_early(digits_dir):
  """E1/E2 on the digits ResNet at step 20, BatchNorm in batch mode.

  Measured: R^2 0.997 over the window, argmin ~0.9 (the training LR is
  0.1), and the best loss ~0.82x the loss at eta = 0: one step on B helps,
  but on this small net it does not halve L_B at this point.
  """
  config = tiny_config(
    digits_dir, **{'model.name': 'resnet_digits', 'batch_size': 128}
  )
  setup = trainer.build(config)
  state = trainer.init_state(setup)
  for t in range(20):
    batch = trainer._to_global(setup, setup.datasets.train.batch(t))
    state, _ = setup.train_step(state, batch)
  etas = probing.eta_grid(probing.default_config())
  batch = trainer._to_global(setup, setup.datasets.train.batch(20))
  info = probes.line_search(
    setup.model, state.params, state.batch_stats, batch, [], etas
  )
  fit = probes.fit_quadratic(etas, info.losses, window='argmin2')
  assert bool(fit.convex[0])
  assert float(fit.r2[0]) >= 0.99
  assert float(fit.grid_min[0]) < 0.9 * float(info.loss_at_zero[0])
  assert float(fit.grid_argmin[0]) > 5 * setup.schedule(20)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('steps', (5, 40), r'probes.steps.*\[0, 40\)'),
    ('eta_min', -1.0, 'probes.eta_min'),
    ('eta_max', float('nan'), 'probes.eta_min'),
    ('num_etas', 0, 'probes.num_etas'),
    ('bn_modes', ('ghost',), 'probes.bn_modes.*batch, running'),
    ('strategy', 'fastest', 'probes.strategy.*sequential'),
    ('grad_batches', 1, 'probes.grad_batches'),
  ],
)
def test_bad_probe_config_names_the_field(field, value, message):
  cfg = probing.default_config()
  cfg[field] = value
  with pytest.raises(ConfigError, match=message):
    probing.validate(cfg, num_steps=40)


def test_interpolation_between_checkpoints(trained_run):
  from sgd_quad import interpolate

  workdir, config, _ = trained_run
  alphas, losses, names = interpolate.interpolate(
    workdir, 20, 40, num_alphas=5, extend=0.0
  )
  assert names[0] == 'heldout_0' and names[-1].startswith('test_')
  assert losses.shape == (len(names), 5)
  # alpha = 1 is checkpoint 40 itself: its held-out losses are its losses.
  setup = trainer.build(config)
  fixed = probing.choose_batches(config.probes, setup.datasets, 64)
  at_b = probes.batch_losses(
    setup.model,
    trainer.checkpoint.load_subtree(workdir, ('params',), step=40),
    None,
    [trainer._to_global(setup, fixed.batches[0])],
    bn_mode='batch',
  )
  assert losses[0, -1] == pytest.approx(float(at_b[0]), rel=1e-5)
