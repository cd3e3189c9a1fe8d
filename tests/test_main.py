"""The launcher as users run it: `python -m sgd_quad.main` in a subprocess."""

import os
import signal
import subprocess
import sys
import time

from sgd_quad import checkpoint, metrics

TINY = [
  '--config.model.name=resnet_tiny',
  '--config.batch_size=64',
  '--config.eval_batch_size=128',
  '--config.data.train_eval_examples=256',
  '--config.schedule.warmup_steps=5',
  '--config.averaging.swa_start=10',
  '--config.averaging.two_point_gaps=(10,)',
]


def _launch(workdir, digits_dir, *flags, **kwargs):
  command = [
    sys.executable,
    '-m',
    'sgd_quad.main',
    '--config=configs/digits.py',
    f'--workdir={workdir}',
    f'--config.data.data_dir={digits_dir}',
    *TINY,
    *flags,
  ]
  return subprocess.Popen(
    command,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    **kwargs,
  )


def test_main_trains_and_prints_the_table(tmp_path, digits_dir):
  # A relative --workdir, as in the README (orbax needs absolute paths).
  proc = _launch(
    os.path.relpath(tmp_path / 'run'),
    digits_dir,
    '--config.num_steps=20',
    '--config.eval_every=10',
    '--config.checkpoint.every=10',
    '--config.log_every=5',
  )
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert 'Compiling the train step' in err
  assert 'steps/s' in err and 's left' in err
  table = out[out.index('Final results') :]
  for column in ('model', 'train loss', 'test loss', 'test top-1', 'steps'):
    assert column in table
  for model in ('raw', 'ema_0.99', 'swa', 'two_point_k10'):
    assert f'\n{model.rjust(13)} ' in table or f' {model} ' in table


def test_bad_flag_is_one_line_and_writes_nothing(tmp_path, digits_dir):
  workdir = tmp_path / 'never'
  proc = _launch(workdir, digits_dir, '--config.optimizer.learning_rate=-1.0')
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert lines == [
    'error: config.optimizer.learning_rate: got -1.0; allowed: a positive '
    'number'
  ]
  assert not workdir.exists()


def test_unknown_field_is_refused(tmp_path, digits_dir):
  proc = _launch(tmp_path / 'never', digits_dir, '--config.optimiser.lr=1')
  _, err = proc.communicate(timeout=300)
  assert proc.returncode != 0
  assert 'optimiser' in err
  assert not (tmp_path / 'never').exists()


def test_sigterm_saves_and_the_next_launch_resumes(tmp_path, digits_dir):
  workdir = tmp_path / 'run'
  flags = (
    '--config.num_steps=400',
    '--config.log_every=1',
    '--config.checkpoint.every=1000',
    '--config.eval_every=400',
  )
  proc = _launch(workdir, digits_dir, *flags)
  deadline = time.time() + 300
  while time.time() < deadline:
    lines = metrics.read_metrics(os.fspath(workdir), 'train')
    if len(lines) >= 1:
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert 'Preempted' in err
  saved = checkpoint.manager(os.fspath(workdir), keep=3).all_steps()
  assert len(saved) == 1 and 0 < saved[0] < 400

  again = _launch(workdir, digits_dir, *flags)
  _, err = again.communicate(timeout=600)
  assert again.returncode == 0, err[-3000:]
  assert f'Resuming from checkpoint at step {saved[0]}' in err
  steps = [r['step'] for r in metrics.read_metrics(os.fspath(workdir), 'train')]
  assert steps == list(range(1, 401))
