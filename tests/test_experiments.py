"""The branch experiments on tiny settings: machinery, outputs, aggregation."""

import math
import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from configs import digits_equivalence
from sgd_quad import checkpoint, experiments, metrics, theory
from sgd_quad.errors import ConfigError
from sgd_quad.experiments import (
  common,
  distances,
  equivalence,
  schedule_gain,
  seeds,
)


def experiment_config(data_dir, **overrides):
  """tiny_config at a constant LR with an `experiment` block (t0 = 20)."""
  config = tiny_config(data_dir, **{'schedule.name': 'constant'})
  config.experiment = experiments.default_config()
  config.experiment.branch_step = 20
  config.experiment.branch_steps = 10
  config.experiment.eval_every = 10
  config.experiment.estimate_batches = 2
  config.experiment.hessian_iters = 0  # the Lanczos compile alone takes 20 s
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def test_aggregate_mean_and_sample_std():
  per_seed = [
    {'a': 1.0, 'b': 5.0},
    {'a': 2.0, 'b': 5.0},
    {'a': 3.0},
    {'a': 4.0, 'c': 7.0},
  ]
  out = seeds.aggregate(per_seed)
  assert list(out) == ['a', 'b', 'c']
  assert out['a'].mean == 2.5
  assert out['a'].std == pytest.approx(math.sqrt(5.0 / 3.0), rel=1e-12)
  assert out['a'].count == 4
  assert (out['b'].mean, out['b'].std, out['b'].count) == (5.0, 0.0, 2)
  assert out['c'].mean == 7.0 and math.isnan(out['c'].std)


def test_seed_config_sets_both_seeds():
  config = digits_equivalence.get_config()
  config.lock()
  config.experiment.base_workdir = '/runs/seed_{seed}/base'
  copy = seeds.seed_config(config, 3)
  assert (copy.init_seed, copy.data_seed) == (3, 3)
  assert copy.experiment.base_workdir == '/runs/seed_3/base'
  assert config.init_seed == 0
  assert copy.experiment.name == config.experiment.name


def test_modelled_rules_name_the_trainers_averagers():
  config = digits_equivalence.get_config()
  config.averaging.lawa_snapshots = 4
  config.averaging.lawa_period = 10
  t0 = config.experiment.branch_step
  rules = equivalence.modelled_rules(config.averaging, t0)
  assert set(rules) == set(
    common.averaged_model_names(config.averaging, config)
  )
  assert rules['ema_0.99'] == theory.EmaRule(0.99)
  assert rules['swa'] == theory.SwaRule(start_step=0)
  assert rules['two_point_k250'] == theory.TwoPointRule(250)


def test_experiment_block_is_validated():
  config = digits_equivalence.get_config()
  config.experiment.branch_step = 10  # inside the 20-step warmup
  with pytest.raises(ConfigError, match='experiment.branch_step'):
    experiments.validate(config.experiment, config)
  config = digits_equivalence.get_config()
  config.schedule.name = 'cosine'
  with pytest.raises(ConfigError, match='schedule.name'):
    experiments.validate(config.experiment, config)


def test_discrepancy_is_taken_over_common_steps():
  a = common.Curve(*map(np.array, ([10, 20, 30], [1, 2, 3], [0.5, 0.6, 0.7])))
  b = common.Curve(*map(np.array, ([20, 30, 40], [2.5, 2, 9], [0.6, 0.9, 0])))
  out = equivalence.discrepancy(a, b)
  assert out['overlap'] == 2
  assert out['loss'] == pytest.approx(0.75)
  assert out['accuracy'] == pytest.approx(0.1)
  empty = equivalence.discrepancy(a, b._replace(steps=np.array([1, 2, 3])))
  assert empty['overlap'] == 0 and math.isnan(empty['loss'])


def test_decay_schedules_end_at_zero():
  for name in ('cosine', 'linear'):
    lrs = schedule_gain.decay_schedule(name, 0.2, 100)
    assert lrs[0] == pytest.approx(0.2) and lrs[-1] <= 0.2 / 100 + 1e-12
    assert np.all(np.diff(lrs) <= 0)


def test_constant_file_schedule_branch_equals_constant_branch(
  tmp_path, digits_dir, trained_run
):
  # A: the constant schedule with averaging on (as branch A runs); B: the
  # 'file' schedule holding the same LR, no averaging. Averaging never
  # touches the raw weights and both schedules give the same float32 LR, so
  # the raw parameters agree bit for bit (on a deterministic CPU backend).
  base_dir, _, _ = trained_run
  config = experiment_config(digits_dir)
  lr = config.optimizer.learning_rate
  path = os.fspath(tmp_path / 'constant.npy')
  theory.write_schedule(path, np.full(10, lr), base_lr=lr, branch_step=20)
  a_cfg = common.branch_config(
    config, base_dir, averaging_cfg=common.run_config(config).averaging
  )
  b_cfg = common.branch_config(config, base_dir, schedule_file=path)
  a = common.run_branch(a_cfg, os.fspath(tmp_path / 'A'))
  b = common.run_branch(b_cfg, os.fspath(tmp_path / 'B'))

  assert set(a) > {'raw'} and set(b) == {'raw'}
  params = [
    checkpoint.load_subtree(os.fspath(tmp_path / d), ('params',), step=30)
    for d in ('A', 'B')
  ]
  jax.tree.map(np.testing.assert_array_equal, *params)
  assert a['raw'] == b['raw']


def test_equivalence_end_to_end(tmp_path, digits_dir):
  config = experiment_config(
    digits_dir,
    **{
      'averaging.ema_decays': (0.9,),
      'averaging.swa': False,
      'averaging.two_point_gaps': (10,),
      'experiment.branch_step': 10,
      'experiment.branch_steps': 20,
      'experiment.match': ('ema_0.9',),
    },
  )
  workdir = os.fspath(tmp_path / 'eq')
  out = equivalence.run(config, workdir)

  a = common.curve(os.path.join(workdir, 'A'), 'ema_0.9')
  b = common.curve(os.path.join(workdir, 'B_ema_0.9'), 'raw')
  np.testing.assert_array_equal(a.steps, [20, 30])
  np.testing.assert_array_equal(b.steps, [20, 30])
  expected = np.mean(np.abs(a.loss - b.loss))
  assert out['ema_0.9/loss_discrepancy'] == pytest.approx(expected)
  assert out['ema_0.9/overlap_evals'] == 2
  with open(os.path.join(workdir, equivalence.FIGURE), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  (record,) = metrics.read_metrics(workdir, 'equivalence')
  assert record['step'] == 30
  assert record['ema_0.9/loss_discrepancy'] == out['ema_0.9/loss_discrepancy']
  lrs = np.load(os.path.join(workdir, 'schedule_ema_0.9.npy'))
  assert lrs.shape == (30,) and np.all(lrs[:10] == np.float32(0.1))
  assert os.path.isdir(os.path.join(workdir, 'B_ema_0.9', 'checkpoints'))
  assert os.path.exists(os.path.join(workdir, 'estimate.json'))
  assert not os.path.exists(os.path.join(workdir, 'B_two_point_k10'))


def test_identical_branches_stay_at_distance_zero(digits_dir, trained_run):
  base_dir, _, _ = trained_run
  config = experiment_config(
    digits_dir,
    **{'experiment.branch_steps': 4, 'experiment.distance_every': 2},
  )
  out = distances.trajectories(config, base_dir, lr_factor=1.0)
  np.testing.assert_array_equal(out['steps'], [20, 22, 24])
  np.testing.assert_array_equal(out['same'], 0.0)
  assert out['different'][0] == 0.0 and np.all(out['different'][1:] > 0)
