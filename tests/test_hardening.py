"""Faults a long run meets: kill -9, a full disk, a file in the workdir's place,
divergence. Each is driven through `python -m sgd_quad.main` in subprocesses,
as a user or a cluster scheduler would meet it.

The launches share a JAX compilation cache, so a relaunch costs seconds rather
than a fresh compile; executables loaded from the cache are the ones compiled,
so results stay bitwise comparable.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import tiny_config
from test_main import TINY

from sgd_quad import checkpoint, metrics, trainer
from sgd_quad.errors import WorkdirError

RUN = (
  *TINY,
  '--config.num_steps=60',
  '--config.eval_every=30',
  '--config.checkpoint.every=10',
  '--config.log_every=5',
)
TMP_MARK = '.orbax-checkpoint-tmp'


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  return os.fspath(tmp_path_factory.mktemp('jax_cache'))


def _launch(workdir, digits_dir, cache, *flags, file_size_kib=None):
  """Starts the launcher; `file_size_kib` caps every file it writes."""
  env = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
  )
  prefix = []
  if file_size_kib is not None:
    # Past the cap a write fails with EFBIG (Python ignores SIGXFSZ).
    prefix = ['bash', '-c', f'ulimit -f {file_size_kib} && exec "$@"', '-']
  command = [
    *prefix,
    sys.executable,
    '-m',
    'sgd_quad.main',
    '--config=configs/digits.py',
    f'--workdir={workdir}',
    f'--config.data.data_dir={digits_dir}',
    *RUN,
    *flags,
  ]
  return subprocess.Popen(
    command,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
  )


@pytest.fixture(scope='module')
def reference(tmp_path_factory, digits_dir, compile_cache):
  """An uninterrupted run of `RUN`: its workdir."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  proc = _launch(workdir, digits_dir, compile_cache)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return os.fspath(workdir)


def _checkpoint_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


def _committed_steps(workdir) -> list[int]:
  names = _listdir(_checkpoint_dir(workdir))
  return sorted(
    int(n.split('.')[0]) for n in names if n.endswith('.sha256.json')
  )


def _listdir(path) -> list[str]:
  try:
    return os.listdir(path)
  except (FileNotFoundError, NotADirectoryError):
    return []


def _saving(workdir) -> bool:
  """Whether orbax is writing a checkpoint (its temporary directory exists)."""
  return any(TMP_MARK in n for n in _listdir(_checkpoint_dir(workdir)))


def _logged_step(workdir) -> int:
  """The newest step in the metrics file (0 before the first line)."""
  return max((r['step'] for r in metrics.read_metrics(workdir)), default=0)


def _wait_for(proc, condition, timeout=300.0):
  """Polls `condition()` every millisecond until true; fails if proc ends."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    if proc.poll() is not None:
      _, err = proc.communicate()
      pytest.fail(f'the run ended before the kill point:\n{err[-3000:]}')
    time.sleep(0.001)
  proc.kill()
  pytest.fail('the kill point never came')


def _kill(proc) -> str:
  """SIGKILLs `proc`; returns its stderr."""
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, err[-3000:]
  return err


def _restored_step(err: str) -> int | None:
  """The step a launch resumed from: 0 for a fresh start, None if unknown."""
  marker = 'Resuming from checkpoint at step '
  if marker in err:
    return int(err.split(marker, 1)[1].split('.', 1)[0])
  return 0 if 'Compiling the train step' in err else None


def _assert_same_run(workdir, reference):
  """Bitwise equal final state, equal metrics apart from timing, no debris."""
  for path in [('params',), ('batch_stats',), ('opt_state',), ('averages',)]:
    got = checkpoint.load_subtree(workdir, path, step=60)
    want = checkpoint.load_subtree(reference, path, step=60)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
      np.testing.assert_array_equal(a, b)

  def without_timing(records):
    return [
      {k: v for k, v in r.items() if k not in metrics.TIMING_FIELDS}
      for r in records
    ]

  assert without_timing(metrics.read_metrics(workdir)) == without_timing(
    metrics.read_metrics(reference)
  )
  assert not _saving(workdir)
  assert not os.path.exists(os.path.join(workdir, 'lock.json'))


def _lock_pid(workdir) -> int | None:
  try:
    with open(os.path.join(workdir, 'lock.json')) as f:
      return json.load(f)['pid']
  except (OSError, ValueError, KeyError):
    return None


def _error_lines(err: str) -> list[str]:
  return [line for line in err.splitlines() if line.startswith('error:')]


def test_kills_and_a_full_disk_then_resume_is_bitwise_identical(
  tmp_path, digits_dir, compile_cache, reference
):
  """SIGKILL at several points and one launch that runs out of disk.

  Every relaunch resumes from the newest committed checkpoint and the final
  state and metrics equal those of the uninterrupted reference.
  """
  workdir = os.fspath(tmp_path / 'run')
  rng = random.Random(7)
  after = rng.choice([15, 25])  # a logged step between two checkpoints
  # (fault, when to SIGKILL, extra delay); no condition: the launch runs
  # with a 16 KiB cap per file, which lets the metrics and TensorBoard files
  # grow but fails the next checkpoint (its files hold 20-100 KiB).
  faults = [
    ('SIGKILL during the first checkpoint save', lambda p: _saving(workdir), 0),
    (
      f'SIGKILL after step {after}',
      lambda p: _logged_step(workdir) >= after,
      rng.uniform(0.0, 0.02),
    ),
    ('full disk at the next checkpoint', None, 0),
    (
      'SIGKILL just after taking the lock',
      lambda p: _lock_pid(workdir) == p.pid,
      0,
    ),
    (
      'SIGKILL during a save after step 30',
      lambda p: _saving(workdir) and _committed_steps(workdir)[-1:] >= [30],
      0,
    ),
  ]
  done = []
  for fault, condition, delay in faults:
    before = _committed_steps(workdir)
    if condition is None:
      proc = _launch(workdir, digits_dir, compile_cache, file_size_kib=16)
      _, err = proc.communicate(timeout=600)
      assert proc.returncode == 4, err[-3000:]
      assert 'Traceback' not in err, err[-3000:]
      [line] = _error_lines(err)
      assert 'File too large' in line, line
      assert f'resume from step {before[-1]}' in line, line
      assert _committed_steps(workdir) == before  # nothing partial committed
    else:
      proc = _launch(workdir, digits_dir, compile_cache)
      _wait_for(proc, lambda p=proc, c=condition: c(p))
      time.sleep(delay)
      err = _kill(proc)
    committed = _committed_steps(workdir)
    done.append(
      {
        'fault': fault,
        'logged': _logged_step(workdir),
        'committed': committed[-1] if committed else 0,
        'err': err,
      }
    )

  final = _launch(workdir, digits_dir, compile_cache)
  _, err = final.communicate(timeout=600)
  assert final.returncode == 0, err[-3000:]
  _assert_same_run(workdir, reference)

  # Each fault's state was resumed by the next launch that got as far as
  # restoring, from the newest checkpoint committed before the fault.
  resumed = [_restored_step(err)]
  for fault in reversed(done[1:]):
    restored = _restored_step(fault['err'])
    resumed.insert(0, resumed[0] if restored is None else restored)
  lines = []
  for fault, restored in zip(done, resumed, strict=True):
    assert restored == fault['committed'], fault['fault']
    lines.append(
      f'{fault["fault"]}: logged step {fault["logged"]}, resumed from '
      f'{restored}, steps lost {fault["logged"] - restored}'
    )
  print(f'\n{len(done)} faults survived:\n' + '\n'.join(lines))


def test_resume_drops_the_lines_it_redoes(tmp_path):
  """The probe of theta_s is written after checkpoint s, so it is redone."""
  writer = metrics.MetricWriter(os.fspath(tmp_path))
  for step, kind in [(10, 'train'), (10, 'probe'), (20, 'train')]:
    writer.write(step, kind, {'x': 1.0})
  writer.flush()
  with open(tmp_path / metrics.METRICS_FILE, 'a') as f:
    f.write('{"step": 20, "kind": "tr')  # cut short by a full disk
  writer.truncate_after(10, redo=('probe',))
  writer.close()
  assert [(r['step'], r['kind']) for r in metrics.read_metrics(tmp_path)] == [
    (10, 'train')
  ]


def test_workdir_that_is_a_file_fails_in_one_line(
  tmp_path, digits_dir, compile_cache
):
  workdir = tmp_path / 'run'
  workdir.write_text('not a directory')
  proc = _launch(workdir, digits_dir, compile_cache)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 4, err[-3000:]
  assert 'Traceback' not in err
  [line] = _error_lines(err)
  assert f'{workdir} is a file, not a directory' in line
  assert workdir.read_text() == 'not a directory'


@pytest.mark.parametrize('name', ['checkpoints', 'tensorboard'])
def test_a_file_where_a_workdir_directory_belongs_is_refused(
  tmp_path, digits_dir, name
):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / name).write_text('x')
  with pytest.raises(WorkdirError, match=f'{name} is a file'):
    trainer.train_and_evaluate(tiny_config(digits_dir), os.fspath(workdir))
  assert os.listdir(workdir) == [name]


def test_workdir_below_a_file_is_refused(tmp_path, digits_dir):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(WorkdirError, match='file is a file'):
    trainer.train_and_evaluate(
      tiny_config(digits_dir), os.fspath(tmp_path / 'file' / 'run')
    )


def test_divergence_exits_non_zero_and_keeps_the_last_good_checkpoint(
  tmp_path, digits_dir, compile_cache
):
  # Index i of the file is the LR of step i + 1: step 16 is the first to blow.
  rates = np.full(60, 0.05, np.float32)
  rates[15:] = 1e30
  np.save(tmp_path / 'lr.npy', rates)
  workdir = os.fspath(tmp_path / 'run')
  proc = _launch(
    workdir,
    digits_dir,
    compile_cache,
    '--config.schedule.name=file',
    f'--config.schedule.file={tmp_path / "lr.npy"}',
  )
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 3, err[-3000:]
  assert 'Traceback' not in err
  [line] = _error_lines(err)
  assert 'non-finite' in line and 'at step 16' in line, line
  assert 'window of steps 16-20' in line, line

  assert _committed_steps(workdir) == [10]
  for leaf in jax.tree.leaves(checkpoint.load_subtree(workdir, ('params',))):
    assert np.all(np.isfinite(leaf))
  assert max(r['step'] for r in metrics.read_metrics(workdir)) == 15
