"""The fixed probe batches' losses on the line between two checkpoints (E3).

  python -m sgd_quad.interpolate --workdir=DIR --step_a=500 --step_b=1000

Reads the raw weights of two checkpoints of a run, theta_a and theta_b, and
evaluates every fixed probe batch of that run (the held-out training and test
batches that `probing.choose_batches` picks from the run's config) at
(1 - alpha) theta_a + alpha theta_b for a grid of alpha. Writes
`<workdir>/probes/interpolation_<a>_<b>.npz` and a PNG beside it.
"""

import io
import sys
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from etils import epath

from sgd_quad import checkpoint, inference, probes, probing, trainer


def interpolate(
  workdir: str,
  step_a: int,
  step_b: int,
  *,
  num_alphas: int = 21,
  extend: float = 0.25,
  bn_mode: str = 'batch',
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Losses of the fixed probe batches on the segment from a to b.

  Args:
    workdir: the run's directory.
    step_a: the checkpoint at alpha = 0.
    step_b: the checkpoint at alpha = 1.
    num_alphas: grid points over [-extend, 1 + extend].
    extend: how far the line is followed beyond both ends.
    bn_mode: 'batch' (each batch's own statistics) or 'running' (those of
      checkpoint a).

  Returns:
    alphas [K], losses [n_batches, K] and the batch names.
  """
  config = inference.stored_config(workdir)
  setup = trainer.build(config, workdir=workdir)
  a = checkpoint.load_subtree(workdir, ('params',), step=step_a)
  b = checkpoint.load_subtree(workdir, ('params',), step=step_b)
  stats = checkpoint.load_subtree(workdir, ('batch_stats',), step=step_a)
  fixed = probing.choose_batches(
    config.probes, setup.datasets, config.batch_size
  )
  batches = [trainer._to_global(setup, x) for x in fixed.batches]
  alphas = np.linspace(-extend, 1 + extend, num_alphas).astype(np.float32)
  losses = probes.interpolation_losses(
    setup.model, a, b, stats, batches, alphas, bn_mode=bn_mode
  )
  return alphas, np.asarray(jax.device_get(losses)), fixed.names


def _write(workdir, step_a, step_b, alphas, losses, names):
  out = epath.Path(workdir) / 'probes'
  out.mkdir(parents=True, exist_ok=True)
  stem = f'interpolation_{step_a}_{step_b}'
  buffer = io.BytesIO()
  np.savez(buffer, alphas=alphas, losses=losses, names=np.array(names))
  tmp = out / f'.{stem}.npz.tmp'
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(out / f'{stem}.npz')
  probes.plot_trajectory_losses(
    out / f'{stem}.png',
    alphas,
    losses,
    names,
    xlabel=f'alpha (0: step {step_a}, 1: step {step_b})',
    log_y=False,
  )
  return out / f'{stem}.png'


_WORKDIR = flags.DEFINE_string('workdir', None, 'The run to read.')
_STEP_A = flags.DEFINE_integer('step_a', None, 'Checkpoint at alpha = 0.')
_STEP_B = flags.DEFINE_integer('step_b', None, 'Checkpoint at alpha = 1.')
_NUM = flags.DEFINE_integer('num_alphas', 21, 'Grid points.')
_BN = flags.DEFINE_enum('bn_mode', 'batch', ['batch', 'running'], 'BN mode.')


def main(argv: Sequence[str]):
  del argv
  logging.get_absl_handler().addFilter(checkpoint.QuietOrbax())
  try:
    alphas, losses, names = interpolate(
      _WORKDIR.value,
      _STEP_A.value,
      _STEP_B.value,
      num_alphas=_NUM.value,
      bn_mode=_BN.value,
    )
  except FileNotFoundError as e:  # no such run or step
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  figure = _write(
    _WORKDIR.value, _STEP_A.value, _STEP_B.value, alphas, losses, names
  )
  print(f'{"alpha":12s} ' + ' '.join(f'{a:6.3f}' for a in alphas))
  for name, row in zip(names, losses, strict=True):
    print(f'{name:12s} ' + ' '.join(f'{x:6.3f}' for x in row))
  print(f'figure: {figure}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'step_a', 'step_b'])
  app.run(main)
