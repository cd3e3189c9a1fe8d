"""What every experiment shares: the base run, branches, curves and output.

A branch is an ordinary run of the trainer (`trainer.train_and_evaluate`)
with `init_from` set to the base run's workdir and `init_from_step` to the
branch step t0: it copies the weights, BatchNorm statistics and optimizer
state there, continues the step count, starts its averagers at t0 and
evaluates every `experiment.eval_every` steps up to t0 + T. Every run lives
in its own subdirectory of the experiment's workdir, so a relaunch resumes
or reuses what is already done. The experiment's own records (kind named
after it) go to `<workdir>/metrics.jsonl` through the run's metric writer,
and its figures are written under a temporary name and renamed.
"""

import io
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from sgd_quad import averaging, config_lib, metrics, probing, trainer
from sgd_quad.errors import ConfigError

Results = dict[str, float]


def experiment_block(config: ml_collections.ConfigDict):
  """The `experiment` block; raises ConfigError when the config has none."""
  if 'experiment' not in config:
    raise ConfigError(
      'experiment',
      'missing block; start from an experiment config such as '
      'configs/digits_equivalence.py',
    )
  return config.experiment


def validated(config: ml_collections.ConfigDict):
  """Checks the whole experiment config; returns its `experiment` block.

  Raises:
    ConfigError: naming the first bad field, before anything runs.
  """
  exp = experiment_block(config)
  config_lib.validate(
    config,
    device_count=jax.device_count(),
    process_count=jax.process_count(),
  )
  return exp


def copy_config(
  config: ml_collections.ConfigDict, *, drop: tuple[str, ...] = ()
) -> ml_collections.ConfigDict:
  """An unlocked deep copy of a config, without the top-level keys `drop`.

  Goes through plain data (`config_lib.to_dict`), turning its lists back
  into tuples, so the copy hashes and compares like the original.
  """

  def fix(value):
    if isinstance(value, Mapping):
      return {k: fix(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(fix(v) for v in value)
    return value

  tree = config_lib.to_dict(config)
  for key in drop:
    tree.pop(key, None)
  return ml_collections.ConfigDict(fix(tree))


def run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of the config without its `experiment` block, unlocked."""
  return copy_config(config, drop=('experiment',))


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The base run: the config's run trained to t0, averaging and probes off."""
  exp = experiment_block(config)
  base = run_config(config)
  base.num_steps = exp.branch_step
  base.eval_every = min(base.eval_every, exp.branch_step)
  base.averaging = averaging.default_config()
  base.probes = probing.default_config()
  return base


def base_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the base run lives: `experiment.base_workdir` or <workdir>/base."""
  exp = experiment_block(config)
  return exp.base_workdir or os.path.join(workdir, 'base')


def ensure_base(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains (or reuses) the base run to the branch step; returns its workdir.

  A given `experiment.base_workdir` is used as it is: it must hold a
  checkpoint at t0, which the branches check when they start.
  """
  exp = experiment_block(config)
  path = base_workdir(config, workdir)
  if not exp.base_workdir:
    logging.info('Base run to step %d in %s.', exp.branch_step, path)
    trainer.train_and_evaluate(base_config(config), path)
  return os.path.abspath(path)


def branch_config(
  config: ml_collections.ConfigDict,
  base_dir: str,
  *,
  averaging_cfg: ml_collections.ConfigDict | None = None,
  learning_rate: float | None = None,
  schedule_file: str | None = None,
  data_seed: int | None = None,
) -> ml_collections.ConfigDict:
  """A branch of the base run from t0 to t0 + T.

  Args:
    config: the experiment's config.
    base_dir: the base run's workdir.
    averaging_cfg: the branch's `averaging` block; None: averaging off.
    learning_rate: the branch's constant LR; None: the base run's.
    schedule_file: a per-step `.npy` LR array (schedule 'file'); overrides
      the constant schedule.
    data_seed: the branch's batch order; None: the base run's.

  Returns:
    The branch's run config.
  """
  exp = experiment_block(config)
  branch = run_config(config)
  branch.num_steps = exp.branch_step + exp.branch_steps
  branch.eval_every = exp.eval_every
  branch.checkpoint.every = exp.eval_every
  branch.checkpoint.keep = 2
  branch.init_from = os.path.abspath(base_dir)
  branch.init_from_step = exp.branch_step
  branch.init_from_opt_state = 'keep'
  branch.averaging = averaging_cfg or averaging.default_config()
  branch.probes = probing.default_config()
  if learning_rate is not None:
    branch.optimizer.learning_rate = float(learning_rate)
  if schedule_file is not None:
    branch.schedule.name = 'file'
    branch.schedule.file = os.path.abspath(schedule_file)
  if data_seed is not None:
    branch.data_seed = int(data_seed)
  return branch


def run_branch(
  branch: ml_collections.ConfigDict, workdir: str
) -> dict[str, dict[str, float]]:
  """Trains one branch (or reuses a finished one); its final results."""
  start, end = branch.init_from_step, branch.num_steps
  logging.info('Branch %s: steps %d-%d.', workdir, start, end)
  return trainer.train_and_evaluate(branch, workdir)


class Curve(NamedTuple):
  """Test metrics of one model of one run, at its evaluation steps.

  Attributes:
    steps: int [n], global steps.
    loss: float [n], test loss.
    accuracy: float [n], test accuracy.
  """

  steps: np.ndarray
  loss: np.ndarray
  accuracy: np.ndarray


def curve(workdir: str, model: str = 'raw') -> Curve:
  """The test curve of `model` ('raw', 'ema_0.99', ...) from a run's metrics.

  Steps where the model was not defined (a two-point average before its
  gap) are left out.
  """
  key = f'eval/{model}'
  rows = [
    (r['step'], r[f'{key}/loss'], r[f'{key}/accuracy'])
    for r in metrics.read_metrics(workdir, 'eval')
    if f'{key}/loss' in r
  ]
  if not rows:
    return Curve(np.zeros(0, int), np.zeros(0), np.zeros(0))
  steps, loss, acc = map(np.asarray, zip(*rows, strict=True))
  return Curve(steps.astype(int), loss.astype(float), acc.astype(float))


def final(results: Mapping[str, Mapping[str, float]], model: str) -> Results:
  """test_loss and test_accuracy of one model from a run's final results."""
  return {
    'test_loss': float(results[model]['test_loss']),
    'test_accuracy': float(results[model]['test_accuracy']),
  }


def averaged_model_names(
  averaging_cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> list[str]:
  """The averaged models a branch with this averaging block tracks."""
  exp = experiment_block(config)
  num_steps = exp.branch_step + exp.branch_steps
  every = range(exp.eval_every, num_steps, exp.eval_every)
  return list(
    averaging.build_averagers(
      averaging_cfg,
      num_steps=num_steps,
      eval_steps=(*every, num_steps),
      first_step=exp.branch_step,
    )
  )


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Creates the experiment's workdir and writes its config.json."""
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  record = {'config': config_lib.to_dict(config), **trainer.code_version()}
  atomic_write_bytes(
    path / 'config.json', json.dumps(record, indent=2).encode()
  )


def write_record(workdir: str, kind: str, step: int, scalars: Results) -> None:
  """Appends one record of the experiment to <workdir>/metrics.jsonl."""
  writer = metrics.MetricWriter(workdir)
  try:
    writer.write(step, kind, scalars)
  finally:
    writer.close()


def atomic_write_bytes(path: epath.Path, data: bytes) -> None:
  """Writes `data` to a temporary sibling and renames it over `path`."""
  path = epath.Path(path)
  tmp = path.parent / f'.{path.name}.tmp'
  tmp.write_bytes(data)
  tmp.replace(path)


def save_figure(fig: Any, path: str | os.PathLike) -> str:
  """Saves a matplotlib figure as PNG atomically and closes it."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120, bbox_inches='tight')
  import matplotlib.pyplot as plt

  plt.close(fig)
  atomic_write_bytes(epath.Path(path), buffer.getvalue())
  return os.fspath(path)


def new_figure(ncols: int, *, width: float = 5.0, height: float = 3.8):
  """A row of `ncols` axes on the non-interactive Agg backend."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height))
  fig.subplots_adjust(wspace=0.3)
  return fig, np.atleast_1d(axes)


def format_table(rows: list[Mapping[str, Any]]) -> str:
  """A plain-text table, one row per mapping (the keys of the first)."""
  headers = list(rows[0])
  cells = [[str(r[h]) for h in headers] for r in rows]
  widths = [
    max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)
  ]
  line = lambda items: '  '.join(
    s.rjust(w) for s, w in zip(items, widths, strict=True)
  )
  rule = ['-' * w for w in widths]
  return '\n'.join([line(headers), line(rule)] + [line(c) for c in cells])


def launch(run: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """The thin launcher of an experiment module: flags, then `run`.

  Defines `--config` and `--workdir` (only when called, so importing an
  experiment module defines no flags) and ends a bad config or workdir in
  one line on stderr with exit code 2.
  """
  import sys

  from absl import app, flags
  from ml_collections import config_flags

  from sgd_quad.errors import WorkdirError
  from sgd_quad.workdir_lock import WorkdirBusyError

  config_flag = config_flags.DEFINE_config_file(
    'config', None, 'An experiment config in configs/.', lock_config=True
  )
  workdir_flag = flags.DEFINE_string(
    'workdir', None, 'Directory for the base run, the branches and results.'
  )
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    try:
      run(config_flag.value, workdir_flag.value)
    except (ConfigError, WorkdirBusyError, WorkdirError) as e:
      logging.error('%s', e)
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  app.run(main)
