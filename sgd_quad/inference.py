"""Loading one model of a run for inference: the raw or an averaged one.

A checkpoint holds the raw weights and every averager's state. `load_model`
reads only what one model needs: its averager's state (rebuilt from the
run's stored config), plus the raw BatchNorm statistics when that model
reuses them (`live`), or fresh statistics when it recomputes them.
"""

import json
from typing import Any

import jax
import ml_collections
from etils import epath

from sgd_quad import checkpoint, trainer

PyTree = Any


def stored_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, from its `config.json`."""
  record = json.loads((epath.Path(workdir) / 'config.json').read_text())
  return ml_collections.ConfigDict(record['config'])


def load_model(
  workdir: str, name: str = trainer.RAW, *, step: int | None = None
) -> dict[str, PyTree]:
  """The variables of one model of a run, ready for `model.apply`.

  Args:
    workdir: the run's directory.
    name: 'raw' or an averaged model's name, e.g. 'ema_0.999', 'swa'.
    step: a saved step; None for the newest good checkpoint.

  Returns:
    {'params': ..., 'batch_stats': ...} on the default device.

  Raises:
    KeyError: if the run has no model of that name (lists the names).
    ValueError: if the averaged model is not yet defined at that step.
  """
  config = stored_config(workdir)
  load = lambda path, **kw: checkpoint.load_subtree(
    workdir, path, step=step, **kw
  )
  if name == trainer.RAW:
    return {'params': load(('params',)), 'batch_stats': load(('batch_stats',))}

  setup = trainer.build(config)
  if name not in setup.averagers:
    raise KeyError(
      f'{name!r} is not a model of {workdir}; allowed: '
      f'{", ".join([trainer.RAW, *setup.averagers])}'
    )
  avg = setup.averagers[name]
  template = jax.eval_shape(lambda: trainer.init_state(setup)).averages[name]
  tree, valid = avg.averager.result(load(('averages', name), template=template))
  if not bool(valid):
    raise ValueError(f'{name} is not defined at that step of {workdir}')
  if avg.bn_mode == 'average':
    return dict(tree)
  if avg.bn_mode == 'live':
    return {'params': tree['params'], 'batch_stats': load(('batch_stats',))}
  at = int(load(('step',)))
  stats = trainer.recompute_stats(setup, tree['params'], at)
  return {'params': tree['params'], 'batch_stats': stats}
