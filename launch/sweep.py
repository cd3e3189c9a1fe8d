#!/usr/bin/env python3
"""Expands a grid of config overrides into one launch per point.

  python launch/sweep.py --config=configs/digits.py --workdir_root=/tmp/sweep \
    --grid=optimizer.learning_rate=0.05,0.1,0.2 \
    --grid='averaging.ema_decays=(0.99,),(0.999,)' --dry_run \
    -- --config.num_steps=500

Each `--grid=FIELD=V1,V2,...` adds an axis (commas inside brackets or quotes
do not split); the sweep runs the product of all axes, each point in its own
workdir `<workdir_root>/<field>=<value>,...`, with `--config.FIELD=V` flags.
Flags after `--` go to every launch. `--launcher` picks how a point runs:
`local` (python -m sgd_quad.main here, one after another), `gpu_node`,
`slurm` (one sbatch job per point) or `tpu_pod` (with `--launcher_args`
naming the TPU, e.g. '--name=r50 --zone=us-central2-b --background').
`--dry_run` prints the commands without running anything. Unknown fields are
refused before anything runs. Outside a dry run the points and their
commands are written to `<workdir_root>/sweep.json`.
"""

import functools
import itertools
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Sequence

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ('local', 'gpu_node', 'slurm', 'tpu_pod')


def _define_flags() -> dict:
  """Defines the script's flags (only when run, so tests can import it)."""
  return {
    'config': flags.DEFINE_string(
      'config', None, 'Config file (configs/*.py).'
    ),
    'root': flags.DEFINE_string(
      'workdir_root', None, 'Directory that gets one workdir per grid point.'
    ),
    'grid': flags.DEFINE_multi_string(
      'grid', [], 'FIELD=V1,V2,...: one axis of the grid (repeat the flag).'
    ),
    'launcher': flags.DEFINE_enum(
      'launcher', 'local', LAUNCHERS, 'How each point is launched.'
    ),
    'launcher_args': flags.DEFINE_string(
      'launcher_args', '', 'Extra words for the launch script (shell syntax).'
    ),
    'dry_run': flags.DEFINE_bool('dry_run', False, 'Print, do not run.'),
  }


class SweepError(ValueError):
  """A grid flag that cannot be expanded."""


def split_values(text: str) -> list[str]:
  """Splits 'a,(b,c),"d,e"' at the commas outside brackets and quotes.

  Args:
    text: comma-separated values.

  Returns:
    The values, stripped, e.g. ['a', '(b,c)', '"d,e"'].
  """
  values, depth, quote, current = [], 0, '', ''
  for char in text:
    if quote:
      quote = '' if char == quote else quote
    elif char in '\'"':
      quote = char
    elif char in '([{':
      depth += 1
    elif char in ')]}':
      depth -= 1
    elif char == ',' and depth == 0:
      values.append(current.strip())
      current = ''
      continue
    current += char
  values.append(current.strip())
  return values


def parse_axis(flag: str) -> tuple[str, list[str]]:
  """'FIELD=V1,V2' -> ('FIELD', ['V1', 'V2'])."""
  field, sep, values = flag.partition('=')
  field = field.strip().removeprefix('config.')
  if not sep or not field or not values.strip():
    raise SweepError(f'--grid={flag}; allowed: FIELD=V1,V2,...')
  values = split_values(values)
  if any(not v for v in values) or len(set(values)) != len(values):
    raise SweepError(f'--grid={flag}: empty or repeated values')
  return field, values


def check_fields(config_file: str, fields: Sequence[str]):
  """Refuses fields that the config does not have.

  Raises:
    SweepError: naming the first unknown field.
  """
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # config files import `configs.*`
  config = runpy.run_path(config_file)['get_config']()
  for field in fields:
    node = config
    for part in field.split('.'):
      if not hasattr(node, 'keys') or part not in node:
        raise SweepError(f'--grid: {config_file} has no field {field!r}')
      node = node[part]


def _slug(value: str) -> str:
  """A value as a path component: '(0.99, 0.999)' -> '0.99+0.999'."""
  value = re.sub(r'[\s()\[\]{}\'"]', '', value).replace(',', '+')
  return re.sub(r'[^A-Za-z0-9.+_=-]', '-', value).strip('+') or 'empty'


def expand(axes: Sequence[tuple[str, list[str]]]) -> list[dict[str, str]]:
  """The product of the axes: one {field: value} per grid point."""
  fields = [field for field, _ in axes]
  if len(set(fields)) != len(fields):
    raise SweepError(f'--grid: a field appears twice in {fields}')
  return [
    dict(zip(fields, point, strict=True))
    for point in itertools.product(*(values for _, values in axes))
  ]


def point_name(point: dict[str, str]) -> str:
  """The workdir name of a point: 'learning_rate=0.1,ema_decays=0.99'."""
  leaves = [field.split('.')[-1] for field in point]
  unique = len(set(leaves)) == len(leaves)
  return ','.join(
    f'{leaf if unique else field}={_slug(value)}'
    for leaf, (field, value) in zip(leaves, point.items(), strict=True)
  )


def command(
  launcher: str,
  config: str,
  workdir: str,
  overrides: Sequence[str],
  launcher_args: Sequence[str] = (),
) -> list[str]:
  """The command that runs one point with `launcher`."""
  if launcher == 'local':
    return [
      sys.executable,
      '-m',
      'sgd_quad.main',
      f'--config={config}',
      f'--workdir={workdir}',
      *overrides,
    ]
  if launcher == 'slurm':
    script = os.path.join(ROOT, 'launch', 'slurm.sbatch')
    return ['sbatch', *launcher_args, script, config, workdir, *overrides]
  script = os.path.join(ROOT, 'launch', f'{launcher}.sh')
  return [
    script,
    f'--config={config}',
    f'--workdir={workdir}',
    *launcher_args,
    '--',
    *overrides,
  ]


def plan(
  config: str,
  workdir_root: str,
  grid: Sequence[str],
  extra: Sequence[str],
  launcher: str = 'local',
  launcher_args: Sequence[str] = (),
) -> list[dict]:
  """Every point of the sweep with its workdir and command.

  Args:
    config: the config file.
    workdir_root: the sweep's directory.
    grid: the `--grid` flags.
    extra: flags for every launch.
    launcher: one of `LAUNCHERS`.
    launcher_args: extra words for the launch script.

  Returns:
    One {'point', 'workdir', 'command'} per grid point.
  """
  if not grid:
    raise SweepError('give at least one --grid=FIELD=V1,V2,...')
  axes = [parse_axis(flag) for flag in grid]
  check_fields(config, [field for field, _ in axes])
  runs = []
  for point in expand(axes):
    workdir = os.path.join(workdir_root, point_name(point))
    overrides = [f'--config.{k}={v}' for k, v in point.items()] + list(extra)
    runs.append(
      {
        'point': point,
        'workdir': workdir,
        'command': command(launcher, config, workdir, overrides, launcher_args),
      }
    )
  names = [r['workdir'] for r in runs]
  if len(set(names)) != len(names):
    raise SweepError('two grid points map to one workdir; use distinct values')
  return runs


def main(argv, flag_values: dict):
  extra = argv[1:]
  config, root = flag_values['config'].value, flag_values['root'].value
  if not config or not root:
    raise app.UsageError('--config and --workdir_root are required')
  try:
    runs = plan(
      config,
      root,
      flag_values['grid'].value,
      extra,
      flag_values['launcher'].value,
      shlex.split(flag_values['launcher_args'].value),
    )
  except SweepError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)

  for run in runs:
    print('+ ' + shlex.join(run['command']), flush=True)
  if flag_values['dry_run'].value:
    return
  from etils import epath

  root = epath.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  (root / 'sweep.json').write_text(json.dumps(runs, indent=2))
  failed = []
  for run in runs:
    logging.info('Launching %s', run['workdir'])
    if subprocess.run(run['command'], cwd=ROOT, check=False).returncode:
      failed.append(run['workdir'])
  if failed:
    print(f'error: {len(failed)} launches failed: {failed}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(functools.partial(main, flag_values=_define_flags()))
