"""Schedules and the optimizer against hand-computed values."""

import ml_collections
import numpy as np
import optax
import pytest

from sgd_quad import optim
from sgd_quad.errors import ConfigError


def _schedule_cfg(**fields):
  cfg = ml_collections.ConfigDict(
    dict(
      name='constant',
      warmup_steps=0,
      boundaries=(),
      decay_factor=0.1,
      decay_start=0,
      decay_steps=10.0,
      file='',
    )
  )
  cfg.update(fields)
  return cfg


def _opt_cfg(**fields):
  cfg = ml_collections.ConfigDict(
    dict(
      momentum=0.9,
      nesterov=False,
      weight_decay=0.0,
      decoupled_weight_decay=False,
    )
  )
  cfg.update(fields)
  return cfg


def test_warmup_then_cosine():
  sched = optim.create_schedule(
    _schedule_cfg(name='cosine', warmup_steps=10), 1.0, 110
  )
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(0.5)
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)


def test_piecewise_boundaries_are_global_steps():
  cfg = _schedule_cfg(name='piecewise', warmup_steps=5, boundaries=(50, 80))
  sched = optim.create_schedule(cfg, 0.4, 100)
  assert float(sched(49)) == pytest.approx(0.4)
  assert float(sched(50)) == pytest.approx(0.04)
  assert float(sched(80)) == pytest.approx(0.004)


def test_linear_decays_to_zero():
  sched = optim.create_schedule(_schedule_cfg(name='linear'), 0.2, 100)
  assert float(sched(50)) == pytest.approx(0.1)
  assert float(sched(100)) == pytest.approx(0.0)


def test_inverse_time_from_start():
  cfg = _schedule_cfg(name='inverse_time', decay_start=20, decay_steps=10.0)
  sched = optim.create_schedule(cfg, 1.0, 100)
  assert float(sched(20)) == pytest.approx(1.0)
  assert float(sched(30)) == pytest.approx(0.5)
  assert float(sched(50)) == pytest.approx(0.25)


def test_file_schedule_reads_every_step(tmp_path):
  lrs = np.linspace(0.1, 0.01, 50, dtype=np.float32)
  np.save(tmp_path / 'lr.npy', lrs)
  cfg = _schedule_cfg(name='file', file=str(tmp_path / 'lr.npy'))
  sched = optim.create_schedule(cfg, 123.0, 50)
  for t in (0, 17, 49):
    assert float(sched(t)) == lrs[t]


def test_file_schedule_shorter_than_run_is_refused(tmp_path):
  np.save(tmp_path / 'lr.npy', np.full(10, 0.1))
  cfg = _schedule_cfg(name='file', file=str(tmp_path / 'lr.npy'))
  with pytest.raises(ConfigError, match='schedule.file.*10 learning rates'):
    optim.create_schedule(cfg, 0.1, 11)


def test_unknown_schedule_names_allowed_values():
  with pytest.raises(ConfigError, match='schedule.name.*allowed: constant'):
    optim.create_schedule(_schedule_cfg(name='exp'), 0.1, 10)


@pytest.mark.parametrize('decoupled', [False, True])
def test_two_updates_with_momentum_and_weight_decay(decoupled):
  lr, mu, wd = 0.1, 0.9, 0.01
  tx = optim.create_optimizer(
    _opt_cfg(momentum=mu, weight_decay=wd, decoupled_weight_decay=decoupled),
    optax.constant_schedule(lr),
  )
  w = np.array([1.0, -2.0], np.float32)
  grads = [np.array([0.5, 0.25], np.float32), np.array([-1.0, 1.0], np.float32)]
  state = tx.init(w)
  expected, m = w.copy(), np.zeros(2)
  for g in grads:
    if decoupled:  # v <- mu v + g;  w <- w - lr (v + wd w)
      m = mu * m + g
      expected = expected - lr * (m + wd * expected)
    else:  # v <- mu v + g + wd w;  w <- w - lr v
      m = mu * m + g + wd * expected
      expected = expected - lr * m
    updates, state = tx.update(g, state, w)
    w = optax.apply_updates(w, updates)
  np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_nesterov_first_update():
  tx = optim.create_optimizer(
    _opt_cfg(momentum=0.9, nesterov=True), optax.constant_schedule(0.1)
  )
  g = np.array([1.0], np.float32)
  updates, _ = tx.update(g, tx.init(np.zeros(1, np.float32)))
  # Nesterov: -lr (g + mu v) with v = g after the first step.
  np.testing.assert_allclose(updates, -0.1 * 1.9, rtol=1e-6)
