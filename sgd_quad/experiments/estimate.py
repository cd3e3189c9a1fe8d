"""A noisy-quadratic spectrum for a real network, from probes at one step.

At a checkpoint theta_t of a run this measures, with `sgd_quad.probes`, on
the training batches B_t, ..., B_{t+n-1} of the run's own stream (augmented,
as SGD sees them), with the training objective (label smoothing and the
coupled L2 term) and BatchNorm in batch-statistics mode, as in training:

- the curvature along the mini-batch gradient,
  kappa = sum_b g_b^T H_b g_b / sum_b |g_b|^2 (a ratio of means, so each
  batch counts by its gradient's size, as the noise-weighted mean curvature
  tr(H C) / tr C of the model);
- the gradient-noise trace tr Cov(g_B) at the training batch size
  (`probes.gradient_statistics` over the n batches);
- the top Hessian eigenvalue of B_t (Lanczos), reported as a check: SGD with
  momentum mu at LR lam is stable only below 2 (1 + mu) / lam.

`spectrum` turns these into a `theory.Spectrum`. The one option so far is
'single_direction' (`theory.single_direction_spectrum`): h = kappa and
s^2 = tr Cov / kappa^2. It reproduces the first-order stationary excess loss
and the relaxation time along the gradient, (1 - mu) / (lam kappa) steps,
but not the spread of relaxation times of a real spectrum.

  python -m sgd_quad.experiments.estimate \
    --config=configs/digits_equivalence.py --workdir=/tmp/estimate
"""

import functools
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from sgd_quad import checkpoint, config_lib, probes, theory, trainer
from sgd_quad.experiments import common
from sgd_quad.theory import noisy_quadratic as nq

PyTree = Any


class Estimate(NamedTuple):
  """Probe measurements at one checkpoint of a run.

  Attributes:
    step: the checkpoint's global step t.
    learning_rate: lam, the run's LR at step t.
    momentum: mu of the optimizer.
    curvature_along_gradient: kappa (see the module docstring).
    curvature_spread: standard deviation of g^T H g / |g|^2 over batches.
    noise_trace: tr Cov(g_B) at the training batch size.
    top_eigenvalue: top Hessian eigenvalue on B_t (NaN: not measured).
    num_batches: n, batches measured.
  """

  step: int
  learning_rate: float
  momentum: float
  curvature_along_gradient: float
  curvature_spread: float
  noise_trace: float
  top_eigenvalue: float
  num_batches: int

  @property
  def alpha(self) -> float:
    """lam kappa / (1 - mu): the effective step along the gradient."""
    return (
      self.learning_rate * self.curvature_along_gradient / (1 - self.momentum)
    )

  @property
  def relaxation_steps(self) -> float:
    """-1 / log rho: the model's relaxation time along the gradient, in steps.

    rho is the spectral radius of one SGD step's linear map on (x, m) at
    h = kappa. Without momentum that is 1 / -log(1 - alpha) ~ 1 / alpha;
    with momentum and lam h > (1 - sqrt(mu))^2 the step is underdamped,
    rho = sqrt(mu), and the time is set by the momentum, not by alpha.
    """
    f = nq.transition(
      self.learning_rate,
      self.curvature_along_gradient,
      self.momentum,
      momentum_form(self.momentum),
    )
    a = np.array([[f.xx, f.xm], [f.mx, f.mm]], dtype=np.float64)
    rho = np.max(np.abs(np.linalg.eigvals(a)))
    return float(-1.0 / np.log(rho)) if rho < 1 else float('inf')

  def as_scalars(self, prefix: str = 'estimate/') -> dict[str, float]:
    """The fields, alpha and the relaxation time as named scalars."""
    out = {f'{prefix}{k}': float(v) for k, v in self._asdict().items()}
    out[f'{prefix}alpha'] = self.alpha
    out[f'{prefix}relaxation_steps'] = self.relaxation_steps
    return out


def momentum_form(momentum: float) -> str:
  """The theory's momentum form of the trainer's optimizer (optax.sgd).

  optax's trace m <- mu m + g, theta <- theta - lam m rescales the whole
  buffer when the LR changes: 'trace'. Without momentum both forms agree.
  """
  return 'trace' if momentum else 'heavy_ball'


@functools.partial(jax.jit, static_argnums=(0,))
def _curvature_along_gradient(loss_fn_factory, params, batch_stats, batch):
  """(g^T H g, |g|^2) of one batch's loss at params."""
  loss_fn = loss_fn_factory(batch_stats)
  batch_loss = lambda p: loss_fn(p, batch)
  g = jax.grad(batch_loss)(params)
  hg = probes.hvp(batch_loss, params, g)
  return probes.tree_vdot(g, hg), probes.tree_vdot(g, g)


def measure(
  config: ml_collections.ConfigDict,
  workdir: str,
  step: int,
  *,
  num_batches: int,
  hessian_iters: int,
) -> Estimate:
  """Measures curvature and gradient noise at a run's checkpoint.

  Args:
    config: the run's config (no `experiment` block needed).
    workdir: the run's workdir, holding a checkpoint at `step`.
    step: t.
    num_batches: n >= 2 training batches B_t .. B_{t+n-1}.
    hessian_iters: Lanczos iterations for the top eigenvalue (0: skip it,
      NaN).

  Returns:
    The `Estimate`.
  """
  config = common.run_config(config)
  config_lib.validate(config, device_count=1, process_count=1)
  if config.optimizer.nesterov:
    # TODO(sgd_quad): the theory has no Nesterov form; its heavy-ball
    # counterpart is used.
    logging.warning('Nesterov momentum is modelled as plain momentum.')
  setup = trainer.build(config, workdir=workdir)
  params = checkpoint.load_subtree(workdir, ('params',), step=step)
  stats = checkpoint.load_subtree(workdir, ('batch_stats',), step=step)
  steps = range(step, step + num_batches)
  batches = [setup.datasets.train.batch(t) for t in steps]
  batches = [jax.tree.map(jnp.asarray, b) for b in batches]
  smoothing = float(config.optimizer.label_smoothing)
  decay = float(config.optimizer.weight_decay)
  objective = {
    'bn_mode': 'batch',
    'objective': 'train',
    'label_smoothing': smoothing,
    'weight_decay': decay,
  }
  factory = functools.partial(probes.make_loss_fn, setup.model, **objective)

  curv = [_curvature_along_gradient(factory, params, stats, b) for b in batches]
  ghg, gg = np.asarray(jax.device_get(curv), dtype=np.float64).T
  grads = probes.gradient_statistics(
    setup.model, params, stats, batches, **objective
  )
  top = np.nan
  if hessian_iters:
    info = probes.batch_curvature(
      setup.model,
      params,
      stats,
      batches[0],
      key=jax.random.key(step),
      num_iters=hessian_iters,
      group_by=None,
      **objective,
    )
    top = float(info.overall.eigenvalue)
  estimate = Estimate(
    step=int(step),
    learning_rate=float(setup.schedule(step)),
    momentum=float(config.optimizer.momentum),
    curvature_along_gradient=float(ghg.sum() / gg.sum()),
    curvature_spread=float(np.std(ghg / gg)),
    noise_trace=float(grads.noise_trace),
    top_eigenvalue=top,
    num_batches=int(num_batches),
  )
  logging.info('Estimate at step %d: %s', step, estimate)
  return estimate


def _single_direction(estimate: Estimate) -> theory.Spectrum:
  return theory.single_direction_spectrum(
    estimate.curvature_along_gradient, estimate.noise_trace
  )


# TODO(sgd_quad): only the single effective direction. A spectrum with slow
# directions (`theory.spectrum_from_eigenvalues` needs a Hessian trace, e.g.
# Hutchinson's, which the probes do not measure yet) would let the matched
# schedules keep training the flat directions that the averages keep moving.
SPECTRA = {'single_direction': _single_direction}


def spectrum(estimate: Estimate, name: str) -> theory.Spectrum:
  """The model spectrum an estimate implies, by name (see SPECTRA).

  Raises:
    ValueError: for an unknown name, or a spectrum on which SGD at the
      run's LR would not be stationary (lam h >= 2 (1 + mu)).
  """
  if name not in SPECTRA:
    raise ValueError(f'spectrum must be one of {", ".join(SPECTRA)}: {name!r}')
  spec = SPECTRA[name](estimate)
  limit = 2 * (1 + estimate.momentum) / estimate.learning_rate
  if np.any(spec.h >= limit):
    raise ValueError(
      f'the estimated curvature {spec.h.max():g} is beyond the stability '
      f'limit 2 (1 + mu) / lam = {limit:g} of the run: no stationary state '
      'to match from'
    )
  return spec


def at_branch(
  config: ml_collections.ConfigDict, workdir: str, base_dir: str
) -> Estimate:
  """`measure` at the branch step t0 of an experiment, kept for relaunches.

  The estimate is stored in <workdir>/estimate.json with what it was
  measured from (base workdir, t0, batches, iterations) and reused when a
  relaunch asks for the same.

  Args:
    config: the experiment config.
    workdir: the experiment's workdir.
    base_dir: the base run's workdir.

  Returns:
    The `Estimate` at t0.
  """
  exp = common.experiment_block(config)
  key = {
    'base_workdir': os.path.abspath(base_dir),
    'step': exp.branch_step,
    'num_batches': exp.estimate_batches,
    'hessian_iters': exp.hessian_iters,
  }
  path = epath.Path(workdir) / 'estimate.json'
  if path.exists():
    stored = json.loads(path.read_text())
    if stored['key'] == key:
      return Estimate(**stored['estimate'])
  est = measure(
    common.base_config(config),
    base_dir,
    exp.branch_step,
    num_batches=exp.estimate_batches,
    hessian_iters=exp.hessian_iters,
  )
  record = {'key': key, 'estimate': est._asdict()}
  common.atomic_write_bytes(path, json.dumps(record, indent=1).encode())
  return est


def run(config: ml_collections.ConfigDict, workdir: str) -> Estimate:
  """Trains (or reuses) the base run and estimates its spectrum at t0.

  Writes the estimate as a record of kind 'estimate' to
  <workdir>/metrics.jsonl and prints it.
  """
  exp = common.validated(config)
  common.prepare_workdir(config, workdir)
  base_dir = common.ensure_base(config, workdir)
  est = at_branch(config, workdir, base_dir)
  scalars = est.as_scalars()
  common.write_record(workdir, 'estimate', exp.branch_step, scalars)
  print('\n'.join(f'{k}: {v:.6g}' for k, v in scalars.items()), flush=True)
  return est


if __name__ == '__main__':
  common.launch(run)
