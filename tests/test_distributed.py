"""Multi-process training on localhost: 2 processes x 2 CPU devices vs 1 x 4.

Every run is `python -m sgd_quad.main` in subprocesses, as users launch it:
the processes of one run find each other through `--coordinator_address` on
a free localhost port and exchange data through gloo. The reference run is
one process with 4 devices; the same global batch and seeds on 2 processes
with 2 devices each must give the same parameters and metrics, also when
the 2 x 2 run resumes from the 1 x 4 run's checkpoint, is preempted, and
resumes from its own. SIGTERM goes out once process 1 starts compiling its
first step: a 20-step run ends too fast to aim at a later step, and the stop
step is agreed the same way whenever the notice arrives.

The runs share a persistent compilation cache, which spares process 0 of
the later runs its compilations (JAX lets only process 0 write the cache,
so process 1 still compiles).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_main import TINY

from configs import digits as digits_config
from sgd_quad import (
  checkpoint,
  config_lib,
  data,
  distributed,
  metrics,
  workdir_lock,
)
from sgd_quad.errors import ConfigError

STEPS = (
  '--config.num_steps=20',
  '--config.eval_every=10',
  '--config.checkpoint.every=10',
  # Every step logged: the metrics of a run resumed at any step then equal
  # those of an uninterrupted run.
  '--config.log_every=1',
)
STATE_FIELDS = ('params', 'batch_stats', 'averages')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class Run:
  """The processes of one launch, with their output in files."""

  def __init__(self, procs, logs):
    self.procs = procs
    self.logs = logs

  def err(self, index: int = 0) -> str:
    with open(self.logs[index][1]) as f:
      return f.read()

  def wait(self, timeout: float = 300) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for proc in self.procs:
      try:
        codes.append(proc.wait(max(deadline - time.time(), 1)))
      except subprocess.TimeoutExpired:
        for p in self.procs:
          p.kill()
        pytest.fail(f'run did not end in {timeout}s: {self.err(0)[-3000:]}')
    return codes

  def wait_for(self, index: int, text: str, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
      if text in self.err(index):
        return
      if self.procs[index].poll() is not None:
        break
      time.sleep(0.2)
    pytest.fail(f'no {text!r} from process {index}: {self.err(index)[-3000:]}')


def launch(
  workdir,
  digits_dir,
  logdir,
  *flags,
  processes: int = 2,
  devices: int = 2,
  cache=None,
  per_process=None,
  common=(),
  distributed_flags=True,
) -> Run:
  """Starts one run as `processes` processes with `devices` CPU devices each."""
  port = _free_port()
  env = dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
    JAX_PLATFORMS='cpu',
  )
  if cache is not None:
    env.update(
      JAX_COMPILATION_CACHE_DIR=os.fspath(cache),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1',
    )
  os.makedirs(logdir, exist_ok=True)
  procs, logs = [], []
  for index in range(processes):
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
    if processes > 1 and distributed_flags:
      command += [
        f'--coordinator_address=localhost:{port}',
        f'--num_processes={processes}',
        f'--process_id={index}',
      ]
    command += list(common)
    if per_process is not None:
      command += per_process[index]
    out = os.path.join(logdir, f'out.{index}')
    err = os.path.join(logdir, f'err.{index}')
    with open(out, 'w') as o, open(err, 'w') as e:
      procs.append(
        subprocess.Popen(command, stdout=o, stderr=e, env=env, cwd=ROOT)
      )
    logs.append((out, err))
  return Run(procs, logs)


def _assert_ok(run: Run, codes: list[int]):
  for index, code in enumerate(codes):
    assert code == 0, f'process {index}: {run.err(index)[-3000:]}'


def assert_same_state(workdir_a, workdir_b, step: int = 20):
  for field in STATE_FIELDS:
    a = checkpoint.load_subtree(os.fspath(workdir_a), (field,), step=step)
    b = checkpoint.load_subtree(os.fspath(workdir_b), (field,), step=step)
    leaves_a, leaves_b = _leaves(a), _leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6, err_msg=field)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_same_metrics(workdir_a, workdir_b):
  a = metrics.read_metrics(os.fspath(workdir_a))
  b = metrics.read_metrics(os.fspath(workdir_b))
  assert [(r['step'], r['kind']) for r in a] == [
    (r['step'], r['kind']) for r in b
  ]
  assert len(a) > 20
  for ra, rb in zip(a, b, strict=True):
    keys = set(ra) - set(metrics.TIMING_FIELDS)
    assert keys == set(rb) - set(metrics.TIMING_FIELDS)
    for key in sorted(keys - {'step', 'kind'}):
      np.testing.assert_allclose(
        ra[key], rb[key], rtol=1e-5, atol=1e-7, err_msg=f'{ra["step"]} {key}'
      )


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def reference(tmp_path_factory, digits_dir, cache):
  """The 1 x 4 run and the 2 x 2 run, and a second run refused meanwhile.

  Returns:
    (1x4 workdir, 2x2 workdir, the refused launch's exit code and stderr).
  """
  root = tmp_path_factory.mktemp('reference')
  one, two = root / 'one_by_four', root / 'two_by_two'
  single = launch(
    one, digits_dir, root / 'log1', *STEPS, processes=1, devices=4, cache=cache
  )
  multi = launch(two, digits_dir, root / 'log2', *STEPS, cache=cache)
  # A second run on the 2 x 2 run's workdir, once that run holds the lock,
  # must be refused while the first one's processes are all admitted.
  multi.wait_for(0, 'Compiling the train step')
  intruder = launch(
    two, digits_dir, root / 'log3', *STEPS, processes=1, devices=2
  )
  intruder_codes = intruder.wait()
  _assert_ok(single, single.wait())
  _assert_ok(multi, multi.wait())
  return one, two, (intruder_codes[0], intruder.err(0))


def test_two_processes_match_one(reference):
  one, two, _ = reference
  assert_same_state(one, two)
  assert_same_metrics(one, two)
  assert checkpoint.manager(os.fspath(two), keep=3).all_steps() == [10, 20]
  assert checkpoint.verify(two / 'checkpoints', 20) is None


def test_a_second_run_is_refused(reference):
  _, _, (code, err) = reference
  assert code == 2, err[-3000:]
  assert 'error: workdir' in err and 'is in use' in err


def test_preempted_multi_process_run_resumes(
  reference, tmp_path, digits_dir, cache
):
  """1x4 checkpoint -> 2x2 resumes, is preempted -> 2x2 resumes to the end.

  SIGTERM goes to process 1 only, as when one host of a pod is preempted;
  JAX's preemption sync point must stop both processes at one step.
  """
  one, _, _ = reference
  workdir = tmp_path / 'run'
  shutil.copytree(one, workdir)
  shutil.rmtree(workdir / 'checkpoints' / '20')
  (workdir / 'checkpoints' / '20.sha256.json').unlink()

  run = launch(workdir, digits_dir, tmp_path / 'log1', *STEPS, cache=cache)
  run.wait_for(1, 'Compiling the train step')
  run.procs[1].send_signal(signal.SIGTERM)
  _assert_ok(run, run.wait())
  for index in (0, 1):
    assert 'Resuming from checkpoint at step 10' in run.err(index)
  stops = [
    int(run.err(i).split('Preempted: saved step ')[1].split(';')[0])
    for i in (0, 1)
  ]
  assert stops[0] == stops[1] and 10 < stops[0] < 20, stops
  stop = stops[0]
  assert checkpoint.verify(workdir / 'checkpoints', stop) is None
  steps = [r['step'] for r in metrics.read_metrics(workdir, 'train')]
  assert steps == list(range(1, stop + 1))

  again = launch(workdir, digits_dir, tmp_path / 'log2', *STEPS, cache=cache)
  _assert_ok(again, again.wait())
  assert f'Resuming from checkpoint at step {stop}' in again.err(1)
  assert_same_state(one, workdir)
  assert_same_metrics(one, workdir)


def test_mismatched_configs_fail_on_every_process(tmp_path, digits_dir):
  run = launch(
    tmp_path / 'run',
    digits_dir,
    tmp_path / 'log',
    *STEPS,
    per_process=[[], ['--config.optimizer.learning_rate=0.2']],
  )
  codes = run.wait(timeout=120)
  for index in (0, 1):
    assert codes[index] == 2, run.err(index)[-3000:]
    lines = [x for x in run.err(index).splitlines() if x.startswith('error:')]
    assert len(lines) == 1
    assert lines[0].startswith(
      'error: config.optimizer.learning_rate: differs between processes '
      '(process 0: 0.1, process 1: 0.2'
    )
  assert not (tmp_path / 'run').exists()


def test_unreachable_coordinator_is_a_clear_error(tmp_path, digits_dir):
  common = ['--num_processes=2', '--distributed_timeout_s=3']
  start = time.time()
  run = launch(
    tmp_path / 'run',
    digits_dir,
    tmp_path / 'log',
    distributed_flags=False,
    per_process=[
      # Process 0 serves a coordinator, but its peer never comes.
      [f'--coordinator_address=localhost:{_free_port()}', '--process_id=0'],
      # Process 1 looks for a coordinator that never comes.
      [f'--coordinator_address=localhost:{_free_port()}', '--process_id=1'],
    ],
    common=common,
  )
  codes = run.wait(timeout=60)
  assert time.time() - start < 60
  for index in (0, 1):
    assert codes[index] == 2, run.err(index)[-3000:]
  assert 'error: cannot reach the coordinator at localhost:' in run.err(1)
  assert 'error: the JAX distributed runtime did not start' in run.err(0)
  assert not (tmp_path / 'run').exists()


def test_process_count_must_divide_the_batch(digits_dir):
  config = digits_config.get_config()
  config.data.data_dir = digits_dir
  config.batch_size = 64
  with pytest.raises(ConfigError, match='process count 3') as info:
    data.validate(config.data, global_batch_size=64, process_count=3)
  assert info.value.field == 'batch_size'
  # Through the full validation: 3 processes can have no device count that
  # divides 64 either, so the batch size is what is named.
  with pytest.raises(ConfigError) as info:
    config_lib.validate(config, device_count=6, process_count=3)
  assert info.value.field == 'batch_size'


def test_cluster_environment_is_read_from_the_environment(monkeypatch):
  for name in list(os.environ):
    if name.startswith(('SLURM_', 'OMPI_', 'JAX_COORDINATOR', 'KUBERNETES_')):
      monkeypatch.delenv(name)
  monkeypatch.delenv('TPU_WORKER_HOSTNAMES', raising=False)
  monkeypatch.delenv('JOB_COMPLETION_INDEX', raising=False)
  assert distributed.cluster_environment() is None
  # An `srun` step of 8 tasks; the batch script alone (no step) is not one.
  slurm = {
    'SLURM_JOB_ID': '7',
    'SLURM_NTASKS': '8',
    'SLURM_PROCID': '3',
    'SLURM_LOCALID': '3',
  }
  for name, value in slurm.items():
    monkeypatch.setenv(name, value)
  assert distributed.cluster_environment() is None
  monkeypatch.setenv('SLURM_STEP_NODELIST', 'node[1-2]')
  assert distributed.cluster_environment() == 'SLURM'
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert distributed.cluster_environment() is None
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')
  assert distributed.cluster_environment() == 'JAX_COORDINATOR_ADDRESS'


def test_coordinator_flags_go_together(monkeypatch):
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS', raising=False)
  monkeypatch.setattr(distributed, 'cluster_environment', lambda: None)
  with pytest.raises(distributed.DistributedStartupError, match='all three'):
    distributed.initialize('localhost:1234', None, 0)
  with pytest.raises(distributed.DistributedStartupError, match='allowed'):
    distributed.initialize('localhost:1234', 2, 2)
  with pytest.raises(distributed.DistributedStartupError, match='host:port'):
    distributed.initialize('localhost', 2, 1, timeout_s=1)
  # One process, or no flags outside a cluster: no runtime is started.
  assert not distributed.initialize('localhost:1234', 1, 0)
  assert not distributed.initialize()


def test_object_store_metrics_need_no_append(tmp_path, monkeypatch):
  """The gs:// code path of the metric writer, run on a local directory."""
  local, store = tmp_path / 'local', tmp_path / 'store'

  def write(workdir, **kwargs):
    writer = metrics.MetricWriter(os.fspath(workdir), **kwargs)
    for step in (1, 2, 3):
      writer.write(step, 'train', {'train/loss': 1.0 / step})
      writer.flush()
    writer.truncate_after(2)
    writer.write(3, 'train', {'train/loss': 0.5})
    writer.close()

  write(local)
  import builtins

  real_open = builtins.open

  def no_append(file, mode='r', *args, **kwargs):
    # TensorBoard's own event files are not the writer's business here.
    if metrics.METRICS_FILE in os.fspath(file):
      assert 'a' not in mode, f'append to {file}'
    return real_open(file, mode, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', no_append)
  write(store, object_store=True)
  monkeypatch.undo()
  assert (store / 'metrics.jsonl').read_text() == (
    local / 'metrics.jsonl'
  ).read_text()
  assert [r['step'] for r in metrics.read_metrics(store)] == [1, 2, 3]


def test_lock_of_a_host_elsewhere_goes_by_heartbeat(tmp_path):
  """On a pod the holder may run on another host, where no pid can be seen."""
  lock_file = tmp_path / workdir_lock.LOCK_FILE
  holder = {'run_id': 'x', 'host': 'elsewhere', 'pid': 1, 'heartbeat': 0}
  holder['heartbeat'] = time.time()
  lock_file.write_text(json.dumps(holder))
  with pytest.raises(workdir_lock.WorkdirBusyError, match='elsewhere'):
    workdir_lock.WorkdirLock(os.fspath(tmp_path)).acquire()
  holder['heartbeat'] = time.time() - 3600
  lock_file.write_text(json.dumps(holder))
  lock = workdir_lock.WorkdirLock(os.fspath(tmp_path), stale_after_sec=600)
  lock.acquire()
  assert json.loads(lock_file.read_text())['run_id'] == lock.run_id
  lock.release()
  assert not lock_file.exists()
