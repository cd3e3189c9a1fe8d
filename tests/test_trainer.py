"""The training loop end to end on the bundled digits with a tiny ResNet."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from sgd_quad import checkpoint, inference, metrics, trainer
from sgd_quad.errors import ConfigError
from sgd_quad.workdir_lock import WorkdirBusyError, WorkdirLock


def _params(workdir, step):
  return checkpoint.load_subtree(workdir, ('params',), step=step)


def _without_timing(records):
  return [
    {k: v for k, v in r.items() if k not in metrics.TIMING_FIELDS}
    for r in records
  ]


def test_run_writes_config_metrics_tensorboard_checkpoints(trained_run):
  workdir, config, results = trained_run
  stored = json.loads(open(os.path.join(workdir, 'config.json')).read())
  assert stored['config']['num_steps'] == config.num_steps
  assert stored['version']

  train = metrics.read_metrics(workdir, 'train')
  assert [r['step'] for r in train] == [10, 20, 30, 40]
  for name in ('loss', 'accuracy', 'learning_rate', 'grad_norm'):
    assert all(np.isfinite(r[f'train/{name}']) for r in train)
  evals = metrics.read_metrics(workdir, 'eval')
  assert [r['step'] for r in evals] == [20, 40]
  assert 'eval/raw/accuracy' in evals[-1]

  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  saved = checkpoint.manager(workdir, keep=3).all_steps()
  assert sorted(saved) == [20, 40]
  assert results['raw']['test_loss'] == pytest.approx(
    evals[-1]['eval/raw/loss']
  )


def test_training_reduces_the_loss(trained_run):
  workdir, _, _ = trained_run
  train = metrics.read_metrics(workdir, 'train')
  assert train[-1]['train/loss'] < 0.7 * train[0]['train/loss']


def test_resume_is_bitwise_identical(run_copy, trained_run):
  workdir, config, _ = run_copy
  mngr = checkpoint.manager(workdir, keep=3)
  mngr.delete(40)
  mngr.close()
  os.remove(os.path.join(workdir, 'checkpoints', '40.sha256.json'))

  trainer.train_and_evaluate(config, workdir)
  original = trained_run[0]
  for path in [('params',), ('batch_stats',), ('opt_state',), ('averages',)]:
    resumed = checkpoint.load_subtree(workdir, path, step=40)
    expected = checkpoint.load_subtree(original, path, step=40)
    for a, b in zip(
      jax.tree.leaves(expected), jax.tree.leaves(resumed), strict=True
    ):
      np.testing.assert_array_equal(a, b)
  assert _without_timing(metrics.read_metrics(workdir)) == _without_timing(
    metrics.read_metrics(original)
  )


def test_corrupt_latest_checkpoint_falls_back(run_copy, caplog):
  workdir, config, _ = run_copy
  step_dir = os.path.join(workdir, 'checkpoints', '40')
  victim = max(
    (os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs),
    key=os.path.getsize,
  )
  with open(victim, 'r+b') as f:
    f.seek(os.path.getsize(victim) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))

  mngr = checkpoint.manager(workdir, keep=3)
  assert checkpoint.latest_good_step(mngr) == 20
  assert 'does not match its checksum' in caplog.text


def test_resume_with_changed_learning_rate_is_refused(run_copy):
  workdir, config, _ = run_copy
  config.optimizer.learning_rate = 0.5
  with pytest.raises(ConfigError, match='optimizer.learning_rate'):
    trainer.train_and_evaluate(config, workdir)


def test_resume_may_change_logging(run_copy):
  workdir, config, results = run_copy
  config.log_every = 5
  again = trainer.train_and_evaluate(config, workdir)
  assert again['raw'] == results['raw']


def test_branch_continues_the_trajectory(tmp_path, trained_run, digits_dir):
  source, _, _ = trained_run
  config = tiny_config(
    digits_dir, init_from=source, init_from_step=20, **_no_averaging()
  )
  workdir = os.fspath(tmp_path / 'branch')
  trainer.train_and_evaluate(config, workdir)

  assert [r['step'] for r in metrics.read_metrics(workdir, 'train')] == [
    30,
    40,
  ]
  for a, b in zip(
    jax.tree.leaves(_params(source, 40)),
    jax.tree.leaves(_params(workdir, 40)),
    strict=True,
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _no_averaging():
  return {
    'averaging.ema_decays': (),
    'averaging.swa': False,
    'averaging.two_point_gaps': (),
  }


def test_branch_from_missing_step_is_refused(tmp_path, trained_run, digits_dir):
  config = tiny_config(digits_dir, init_from=trained_run[0], init_from_step=7)
  with pytest.raises(ConfigError, match='init_from_step.*20, 40'):
    trainer.train_and_evaluate(config, os.fspath(tmp_path / 'b'))
  assert not (tmp_path / 'b').exists()


def test_second_run_on_a_live_workdir_is_refused(run_copy):
  workdir, config, _ = run_copy
  lock = WorkdirLock(workdir)
  lock.acquire()
  try:
    with pytest.raises(WorkdirBusyError, match='in use by pid'):
      trainer.train_and_evaluate(config, workdir)
  finally:
    lock.release()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
  (tmp_path / 'lock.json').write_text(
    json.dumps({'run_id': 'x', 'host': os.uname().nodename, 'pid': 2**22 + 7})
  )
  lock = WorkdirLock(os.fspath(tmp_path))
  lock.acquire()
  lock.release()
  assert not (tmp_path / 'lock.json').exists()


def test_divergence_stops_without_a_bad_checkpoint(tmp_path, digits_dir):
  config = tiny_config(
    digits_dir, **{'optimizer.learning_rate': 1e8, 'schedule.warmup_steps': 0}
  )
  workdir = os.fspath(tmp_path / 'nan')
  with pytest.raises(trainer.NonFiniteError, match='non-finite .* step'):
    trainer.train_and_evaluate(config, workdir)
  assert checkpoint.manager(workdir, keep=3).all_steps() == []


def test_a_state_with_non_finite_statistics_is_not_checkpointed(digits_dir):
  setup = trainer.build(tiny_config(digits_dir))
  state = trainer.init_state(setup)
  trainer.check_state_finite(setup, state, 0)

  # An overflowed batch variance leaves the loss finite but not the state.
  stats = jax.tree.map(lambda x: x.at[0].set(jnp.inf), state.batch_stats)
  state = state.replace(batch_stats=stats)
  with pytest.raises(trainer.NonFiniteError) as error:
    trainer.check_state_finite(setup, state, 7)
  message = str(error.value)
  assert 'non-finite batch_stats' in message and 'after step 7' in message
  assert 'params' not in message and 'averages' not in message


def test_train_step_compiles_once(digits_dir):
  config = tiny_config(digits_dir)
  setup = trainer.build(config)
  state = trainer.init_state(setup)
  for step in range(3):
    batch = trainer._to_global(setup, setup.datasets.train.batch(step))
    state, _ = setup.train_step(state, batch)
  assert setup.train_step._cache_size() == 1


def test_init_does_not_alias_averages(digits_dir):
  """Averager state must not share buffers with params (donation)."""
  setup = trainer.build(tiny_config(digits_dir))
  state = trainer.init_state(setup)
  param_ptrs = {
    x.unsafe_buffer_pointer() for x in jax.tree.leaves(state.params)
  }
  for leaf in jax.tree.leaves(state.averages):
    assert leaf.unsafe_buffer_pointer() not in param_ptrs


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('optimizer.learning_rate', -0.1, 'positive'),
    ('batch_size', 0, 'positive integer'),
    ('eval_every', 0, 'positive integer'),
    ('model.name', 'resnet9000', 'allowed: '),
    ('data.name', 'mnist', 'allowed: '),
    ('schedule.name', 'exp', 'allowed: constant'),
    ('checkpoint.keep', 1, '>= 2'),
    ('optimizer.momentum', 1.5, r'\[0, 1\)'),
  ],
)
def test_bad_config_names_the_field(
  tmp_path, digits_dir, field, value, message
):
  config = tiny_config(digits_dir, **{field: value})
  workdir = tmp_path / 'never'
  with pytest.raises(ConfigError, match=message) as info:
    trainer.train_and_evaluate(config, os.fspath(workdir))
  assert info.value.field == field or info.value.field.endswith(
    field.split('.')[-1]
  )
  assert not workdir.exists()


def test_averaging_memory_over_budget_is_refused(tmp_path, digits_dir):
  config = tiny_config(digits_dir, **{'averaging.memory_budget_mb': 0.01})
  with pytest.raises(ConfigError, match='memory_budget_mb.*MiB'):
    trainer.train_and_evaluate(config, os.fspath(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()


def test_load_model_for_inference(trained_run, digits_dir):
  workdir, config, results = trained_run
  setup = trainer.build(config)
  for name in ('raw', 'ema_0.99', 'swa', 'two_point_k10'):
    variables = inference.load_model(workdir, name)
    scores = trainer.evaluate(setup, {name: variables}, setup.datasets.test)
    assert scores[name]['loss'] == pytest.approx(
      results[name]['test_loss'], rel=1e-5
    )
  with pytest.raises(KeyError, match='allowed: raw, ema_0.99'):
    inference.load_model(workdir, 'ema_0.5')
  with pytest.raises(
    FileNotFoundError, match=r'step 30 is not saved .*\[20, 40\]'
  ):
    checkpoint.load_subtree(workdir, ('params',), step=30)


def test_shutil_copy_of_checkpoints_is_resumable(run_copy):
  """Workdirs are self-contained: a copied run resumes where it stopped."""
  workdir, config, results = run_copy
  moved = workdir + '_moved'
  shutil.move(workdir, moved)
  assert trainer.train_and_evaluate(config, moved)['raw'] == results['raw']
