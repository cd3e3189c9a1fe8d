"""Repeats an experiment over seeds and reports mean and standard deviation.

`experiment.name` picks the experiment (`EXPERIMENTS`); for every seed s in
`experiment.seeds` it runs with init_seed = data_seed = s in
`<workdir>/seed_<s>` (each seed trains its own base run there, or reuses
`experiment.base_workdir` with '{seed}' replaced by s, e.g. the bases of an
earlier seeds run: DIR/seed_{seed}/base), then aggregates every scalar the
experiment returns: the mean, the sample standard deviation (ddof = 1; NaN
for a single seed) and the number of seeds that reported it. The summary
goes to `<workdir>/metrics.jsonl` (kind 'seeds': `<scalar>/mean`,
`<scalar>/std`, `<scalar>/count`) and, with every seed's values, to
`<workdir>/seeds.json`; a table is printed, and experiments in
`SUMMARY_PLOTS` draw `<workdir>/<name>.png` with mean +- std. Relaunching
reuses finished runs.

  python -m sgd_quad.experiments.seeds \
    --config=configs/digits_two_point.py --workdir=/tmp/two_point_seeds
"""

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import ml_collections
import numpy as np
from etils import epath

from sgd_quad.errors import ConfigError
from sgd_quad.experiments import (
  common,
  distances,
  equivalence,
  schedule_gain,
  two_point_gains,
)

Experiment = Callable[[ml_collections.ConfigDict, str], Mapping[str, float]]

EXPERIMENTS: Mapping[str, Experiment] = {
  'equivalence': equivalence.run,
  'two_point_gains': two_point_gains.run,
  'schedule_gain': schedule_gain.run,
  'distances': distances.run,
}


# Experiments that can draw their figure from a summary over seeds:
# `plot(config, summary, path) -> path`, written to <workdir>/<name>.png.
SUMMARY_PLOTS: Mapping[str, Callable[..., str]] = {
  'two_point_gains': two_point_gains.plot_summary,
}


class Summary(NamedTuple):
  """One scalar over seeds.

  Attributes:
    mean: the mean over the seeds that reported it.
    std: the sample standard deviation (ddof = 1); NaN for one value.
    count: how many seeds reported it.
  """

  mean: float
  std: float
  count: int


def aggregate(per_seed: Sequence[Mapping[str, float]]) -> dict[str, Summary]:
  """Mean and sample standard deviation of each scalar over seeds.

  mean = (1/n) sum_s x_s, std = sqrt(sum_s (x_s - mean)^2 / (n - 1)), over
  the n seeds whose results hold the scalar (NaN values count as held, so
  a failed measurement shows as NaN rather than vanishing).

  Args:
    per_seed: one mapping of scalars per seed.

  Returns:
    name -> `Summary`, in the order the names first appear.
  """
  names = list(dict.fromkeys(k for r in per_seed for k in r))
  out = {}
  for name in names:
    values = np.array([r[name] for r in per_seed if name in r], np.float64)
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    out[name] = Summary(float(np.mean(values)), std, len(values))
  return out


def seed_config(
  config: ml_collections.ConfigDict, seed: int
) -> ml_collections.ConfigDict:
  """The config with init_seed = data_seed = seed (an unlocked copy).

  A '{seed}' in `experiment.base_workdir` becomes the seed, so experiments
  can share the base runs of an earlier one.
  """
  copy = common.copy_config(config)
  copy.init_seed = int(seed)
  copy.data_seed = int(seed)
  base = copy.experiment.base_workdir
  copy.experiment.base_workdir = base.replace('{seed}', str(seed))
  return copy


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Summary]:
  """Runs `experiment.name` for every seed and aggregates its scalars.

  Args:
    config: an experiment config.
    workdir: the seeds' workdirs and the summary go below it.

  Returns:
    name -> `Summary` over the seeds.
  """
  exp = common.validated(config)
  if exp.base_workdir and '{seed}' not in exp.base_workdir:
    raise ConfigError(
      'experiment.base_workdir',
      f'got {exp.base_workdir!r}; allowed for the seeds runner: empty (every '
      "seed trains its own base) or a path with '{seed}' in it",
    )
  experiment = EXPERIMENTS[exp.name]
  common.prepare_workdir(config, workdir)
  per_seed = []
  for seed in exp.seeds:
    seed_dir = os.path.join(workdir, f'seed_{seed}')
    per_seed.append(dict(experiment(seed_config(config, seed), seed_dir)))
  summary = aggregate(per_seed)

  scalars = {}
  for name, s in summary.items():
    scalars.update(
      {f'{name}/mean': s.mean, f'{name}/std': s.std, f'{name}/count': s.count}
    )
  end = exp.branch_step + exp.branch_steps
  common.write_record(workdir, 'seeds', end, scalars)
  record = {
    'experiment': exp.name,
    'seeds': list(exp.seeds),
    'per_seed': per_seed,
    'summary': {k: s._asdict() for k, s in summary.items()},
  }
  common.atomic_write_bytes(
    epath.Path(workdir) / 'seeds.json',
    json.dumps(record, indent=1, default=float).encode(),
  )
  figure = ''
  if exp.name in SUMMARY_PLOTS:
    path = os.path.join(workdir, f'{exp.name}.png')
    figure = '\nfigure: ' + SUMMARY_PLOTS[exp.name](config, summary, path)
  rows = [
    {'scalar': k, 'mean +- std': f'{s.mean:.5g} +- {s.std:.2g}', 'n': s.count}
    for k, s in summary.items()
  ]
  print(
    f'\n{exp.name} over seeds {tuple(exp.seeds)}\n'
    + common.format_table(rows)
    + figure,
    flush=True,
  )
  return summary


if __name__ == '__main__':
  common.launch(run)
