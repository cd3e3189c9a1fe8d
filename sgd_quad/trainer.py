"""The one training loop: set up, resume or branch, train, evaluate, report.

`train_and_evaluate(config, workdir)` is what `python -m sgd_quad.main` runs
and what notebooks and tests call. The loop itself is short: the steps are
pure functions (`steps.py`) jitted once here, metrics stay on the device
until a log interval, and every checkpoint is preceded by a flushed metrics
line so that a crash loses at most the steps since the last checkpoint.
"""

import functools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import sgd_quad
from sgd_quad import (
  averaging,
  checkpoint,
  config_lib,
  data,
  models,
  optim,
  probing,
)
from sgd_quad import steps as steps_lib
from sgd_quad.errors import ConfigError, WorkdirError
from sgd_quad.metrics import MetricWriter, read_metrics
from sgd_quad.workdir_lock import WorkdirBusyError, WorkdirLock

PyTree = Any
RAW = 'raw'


class Setup(NamedTuple):
  """The static pieces of a run, built once from the config."""

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  datasets: data.Datasets
  model: Any
  tx: optax.GradientTransformation
  schedule: optim.Schedule
  averagers: dict[str, averaging.AveragedModel]
  first_step: int
  train_step: Any
  eval_step: Any
  model_variables: Any
  update_direction: Any
  nonfinite_parts: Any
  workdir: str


def eval_steps(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The global steps at which a run evaluates: every `eval_every`, and last."""
  every = range(config.eval_every, config.num_steps, config.eval_every)
  return tuple(every) + (config.num_steps,)


def _compute_dtype(name: str):
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}.get(
    name, jnp.float16
  )


def code_version() -> dict[str, str]:
  """The package version and, when run from a git checkout, the commit."""
  version = {'version': sgd_quad.__version__}
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(
      ['git', 'rev-parse', 'HEAD'],
      cwd=here,
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    )
    version['git'] = out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return version


def _check_resume_config(config, workdir: epath.Path):
  """Refuses to resume a workdir with a config that changes the run."""
  stored_file = workdir / 'config.json'
  if not stored_file.exists():
    return
  stored = json.loads(stored_file.read_text())['config']
  changed = config_lib.run_fields_changed(stored, config_lib.to_dict(config))
  if changed:
    raise ConfigError(
      changed[0],
      f'differs from the run stored in {workdir} (changed: '
      f'{", ".join(changed)}); allowed to change on resume: '
      f'{", ".join(config_lib.RESUMABLE_FIELDS)}; use a new --workdir',
    )


def _branch_source(config) -> tuple[epath.Path, int] | None:
  """The workdir and step a branched run starts from, if any."""
  if not config.init_from:
    return None
  source = epath.Path(config.init_from)
  mngr = checkpoint.manager(os.fspath(source), keep=config.checkpoint.keep)
  good = checkpoint.latest_good_step(mngr)
  saved = [s for s in mngr.all_steps() if good is not None and s <= good]
  if not saved:
    raise ConfigError('init_from', f'no checkpoint in {source}/checkpoints')
  step = config.init_from_step if config.init_from_step >= 0 else max(saved)
  if step not in saved:
    raise ConfigError(
      'init_from_step',
      f'{step} is not saved in {source}; allowed: -1 (latest) or one of '
      f'{sorted(saved)}',
    )
  if step >= config.num_steps:
    raise ConfigError(
      'init_from_step',
      f'branch point {step} is not before num_steps ({config.num_steps})',
    )
  return source, step


def build(
  config: ml_collections.ConfigDict,
  *,
  first_step: int = 0,
  mesh: jax.sharding.Mesh | None = None,
  workdir: str = '',
) -> Setup:
  """Builds data, model, optimizer, averagers and the jitted steps.

  Args:
    config: a validated run config.
    first_step: the global step the averagers start at (0, or the branch
      point of a branched run).
    mesh: a 1-D mesh with axis 'data'; by default all devices.
    workdir: where the run writes (probe curves and figures go below it).

  Returns:
    The run's `Setup`.
  """
  if mesh is None:
    mesh = jax.make_mesh((jax.device_count(),), ('data',))
  datasets = data.create_datasets(
    config.data,
    global_batch_size=config.batch_size,
    eval_batch_size=config.eval_batch_size,
    data_seed=config.data_seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    shard_multiple=jax.local_device_count(),
  )
  model = models.create_model(
    config.model.name,
    num_classes=datasets.info.num_classes,
    dtype=_compute_dtype(config.model.dtype),
    bn_momentum=config.model.bn_momentum,
  )
  schedule = optim.create_schedule(
    config.schedule, config.optimizer.learning_rate, config.num_steps
  )
  tx = optim.create_optimizer(config.optimizer, schedule)
  averagers = averaging.build_averagers(
    config.averaging,
    num_steps=config.num_steps,
    eval_steps=eval_steps(config),
    first_step=first_step,
  )

  replicated = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P('data'))
  train_step = jax.jit(
    functools.partial(
      steps_lib.train_step,
      model=model,
      tx=tx,
      schedule=schedule,
      averagers=averagers,
      label_smoothing=config.optimizer.label_smoothing,
      ghost_batch_size=config.model.ghost_batch_size,
    ),
    in_shardings=(replicated, rows),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
  eval_step = jax.jit(
    functools.partial(steps_lib.eval_step, model=model),
    in_shardings=(replicated, rows),
    out_shardings=replicated,
  )
  return Setup(
    config=config,
    mesh=mesh,
    datasets=datasets,
    model=model,
    tx=tx,
    schedule=schedule,
    averagers=averagers,
    first_step=first_step,
    train_step=train_step,
    eval_step=eval_step,
    model_variables=jax.jit(
      functools.partial(steps_lib.model_variables, averagers=averagers),
      out_shardings=replicated,
    ),
    update_direction=jax.jit(
      functools.partial(
        steps_lib.update_direction,
        model=model,
        tx=tx,
        schedule=schedule,
        label_smoothing=config.optimizer.label_smoothing,
        ghost_batch_size=config.model.ghost_batch_size,
      ),
      in_shardings=(replicated, rows),
      out_shardings=replicated,
    ),
    nonfinite_parts=jax.jit(
      steps_lib.nonfinite_parts, out_shardings=replicated
    ),
    workdir=workdir,
  )


def init_state(setup: Setup) -> steps_lib.TrainState:
  """A fresh state from `init_seed`, replicated over the mesh."""
  image_shape = setup.datasets.info.image_shape

  def init(key):
    variables = setup.model.init(
      key, jnp.zeros((1, *image_shape), jnp.float32), train=False
    )
    params, stats = variables['params'], variables['batch_stats']
    return _fresh_state(setup, jnp.int32(0), params, stats, None)

  replicated = NamedSharding(setup.mesh, P())
  # XLA's RngBitGenerator compiles in a fraction of threefry's time (about
  # 3 s instead of 35 s for a small ResNet's init on a 2-core CPU).
  key = jax.random.key(setup.config.init_seed, impl='rbg')
  return jax.jit(init, out_shardings=replicated)(key)


def _fresh_state(setup, step, params, stats, opt_state):
  """A state whose averagers start from `params` (opt_state None: fresh)."""
  if opt_state is None:
    opt_state = setup.tx.init(params)
  averages = {
    name: avg.averager.init(
      averaging.variables_to_average(
        {'params': params, 'batch_stats': stats}, avg.bn_mode
      )
    )
    for name, avg in setup.averagers.items()
  }
  return steps_lib.TrainState(
    step=step,
    params=params,
    batch_stats=stats,
    opt_state=opt_state,
    averages=averages,
  )


def branch_state(
  setup: Setup, source: epath.Path, step: int
) -> steps_lib.TrainState:
  """The state of a run branched from `source` at `step`.

  Parameters and BatchNorm statistics are copied; the optimizer state is
  copied (`init_from_opt_state='keep'`) or started afresh ('reset'); the
  averagers start from the copied weights, and the step count continues.
  """
  mngr = checkpoint.manager(
    os.fspath(source), keep=setup.config.checkpoint.keep
  )
  template = _state_template(setup)
  stored = checkpoint.restore_fields(
    mngr,
    step,
    {k: getattr(template, k) for k in ('params', 'batch_stats', 'opt_state')},
  )
  mngr.close()
  keep_opt = setup.config.init_from_opt_state == 'keep'
  replicated = NamedSharding(setup.mesh, P())

  def make(params, stats, opt_state):
    return _fresh_state(
      setup,
      jnp.int32(step),
      params,
      stats,
      opt_state if keep_opt else None,
    )

  return jax.jit(make, out_shardings=replicated)(
    stored['params'], stored['batch_stats'], stored['opt_state']
  )


def _state_template(setup: Setup) -> steps_lib.TrainState:
  """Shapes, dtypes and (replicated) shardings of the run's state."""
  replicated = NamedSharding(setup.mesh, P())
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    jax.eval_shape(lambda: init_state(setup)),
  )


def _to_global(setup: Setup, batch: Mapping[str, np.ndarray]):
  """Assembles the process-local rows into a batch sharded over the mesh."""
  rows = NamedSharding(setup.mesh, P('data'))
  return {
    k: jax.make_array_from_process_local_data(rows, v) for k, v in batch.items()
  }


def model_variables(
  setup: Setup, state: steps_lib.TrainState, step: int
) -> tuple[dict[str, dict[str, PyTree]], list[str]]:
  """The variables of the raw model and of every averaged model.

  Every model is returned, defined or not, so the evaluation function keeps
  one compiled shape; the second result names the models that are defined
  at this step (a two-point average before its gap, say, is not).
  """
  variables, valid = setup.model_variables(state)
  valid = jax.device_get(valid)
  for name, avg in setup.averagers.items():
    if avg.bn_mode == 'recompute' and valid[name]:
      params = variables[name]['params']
      stats = recompute_stats(setup, params, step)
      variables[name] = {'params': params, 'batch_stats': stats}
  return variables, [n for n in (RAW, *setup.averagers) if valid[n]]


def recompute_stats(setup: Setup, params: PyTree, step: int) -> PyTree:
  """BatchNorm statistics of `params` on the training batches before `step`.

  Replays the `averaging.recompute_batches` training batches that precede
  `step` (the data the averaged weights were formed from), each normalised
  with its own statistics, and averages the per-batch statistics.
  """
  count = setup.config.averaging.recompute_batches
  first = max(0, step - count)
  batches = [
    _to_global(setup, setup.datasets.train.batch(t))
    for t in range(first, first + count)
  ]
  return averaging.recompute_batch_stats(setup.model, params, batches)


def evaluate(
  setup: Setup,
  variables: Mapping[str, PyTree],
  stream: Iterable[Mapping[str, np.ndarray]],
) -> dict[str, dict[str, float]]:
  """Mean loss and accuracy of each model over a whole evaluation stream."""
  totals = None
  for batch in stream:
    sums = setup.eval_step(variables, _to_global(setup, batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  return {
    name: {
      'loss': float(t['loss_sum'] / t['count']),
      'accuracy': float(t['correct_sum'] / t['count']),
    }
    for name, t in totals.items()
  }


def _eval_scalars(setup, state, step) -> tuple[dict, dict]:
  """Scores every model on the test split and the train-eval subset."""
  variables, valid = model_variables(setup, state, step)
  test = evaluate(setup, variables, setup.datasets.test)
  train = evaluate(setup, variables, setup.datasets.train_eval)
  test = {name: test[name] for name in valid}
  train = {name: train[name] for name in valid}
  scalars = {}
  for name in valid:
    scalars[f'eval/{name}/loss'] = test[name]['loss']
    scalars[f'eval/{name}/accuracy'] = test[name]['accuracy']
    scalars[f'train_eval/{name}/loss'] = train[name]['loss']
    scalars[f'train_eval/{name}/accuracy'] = train[name]['accuracy']
  return scalars, {'test': test, 'train': train}


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss or norm."""


def _summarise(window: list[dict[str, jax.Array]], first: int, last: int):
  """Means of a window of per-step metrics; fails fast on non-finite ones."""
  stacked = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *window))
  first_bad = {
    name: first + int(np.argmin(np.isfinite(stacked[name])))
    for name in ('loss', 'grad_norm', 'param_norm', 'update_norm')
    if not np.all(np.isfinite(stacked[name]))
  }
  if first_bad:
    # The earliest step names the cause: a blown-up update shows in the
    # norms a step or two before the loss.
    bad = min(first_bad.values())
    names = ', '.join(n for n, s in first_bad.items() if s == bad)
    raise NonFiniteError(
      f'non-finite {names} at step {bad} (window of steps {first}-{last}); '
      'no checkpoint was written for this window, earlier ones are kept'
    )
  return {f'train/{k}': float(np.mean(v)) for k, v in stacked.items()}


def check_state_finite(setup: Setup, state: steps_lib.TrainState, step: int):
  """Refuses to checkpoint a state that holds a NaN or an infinity.

  A batch variance that overflows still normalises to finite activations,
  so BatchNorm statistics (or momentum, or an average) can go bad beside a
  finite loss; the per-step checks of losses and norms would miss it.

  Raises:
    NonFiniteError: naming the parts of the state that are not finite.
  """
  bad = jax.device_get(setup.nonfinite_parts(state))
  names = [name for name, flag in bad.items() if flag]
  if names:
    raise NonFiniteError(
      f'non-finite {", ".join(names)} in the state after step {step}; no '
      'checkpoint was written for it, earlier ones are kept'
    )


def _format_table(rows: list[dict]) -> str:
  """A plain-text table of final results, one row per model."""
  headers = list(rows[0])
  cells = [[str(r[h]) for h in headers] for r in rows]
  widths = [
    max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)
  ]
  line = lambda items: '  '.join(
    s.rjust(w) for s, w in zip(items, widths, strict=True)
  )
  return '\n'.join(
    [line(headers), line(['-' * w for w in widths])] + [line(c) for c in cells]
  )


def _hold_workdir(workdir: epath.Path) -> WorkdirLock | None:
  """Takes the workdir lock on process 0 and shares the verdict."""
  lock, busy = None, ''
  if jax.process_index() == 0:
    lock = WorkdirLock(os.fspath(workdir))
    try:
      lock.acquire()
    except WorkdirBusyError as e:
      busy = str(e)
  if jax.process_count() > 1:
    busy = _broadcast_text(busy)
  if busy:
    raise WorkdirBusyError(busy)
  return lock


def _broadcast_text(text: str) -> str:
  """Process 0's string, on every process."""
  from jax.experimental import multihost_utils

  data = np.zeros(1024, np.uint8)
  raw = text.encode()[:1024]
  data[: len(raw)] = np.frombuffer(raw, np.uint8)
  data = multihost_utils.broadcast_one_to_all(data)
  return bytes(np.asarray(data)).rstrip(b'\0').decode()


class _Preemption:
  """Notices SIGTERM; every process agrees on the step to stop at."""

  def __init__(self):
    self._signalled = threading.Event()
    self._previous = None
    self._calls = 0
    if jax.process_count() == 1 and (
      threading.current_thread() is threading.main_thread()
    ):
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled.set()

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step`; every process calls it once per step."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      # JAX picks 1 + the largest counter reported so far as the stop point,
      # and a process that has not called yet reports 0. Counting this
      # launch's steps (the same on every process) instead of passing the
      # global step keeps a notice that arrives before a resumed run's
      # first step from picking a step already past (1 < resume step).
      self._calls += 1
      return multihost_utils.reached_preemption_sync_point(self._calls)
    return self._signalled.is_set()

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_workdir(workdir: epath.Path):
  """Refuses a workdir that is a file, or holds files where directories go."""
  for path in (workdir / 'checkpoints', workdir / 'tensorboard', workdir):
    if path.exists() and not path.is_dir():
      raise WorkdirError(
        f'{path} is a file, not a directory; move it away or use another '
        '--workdir'
      )
  for parent in workdir.parents:
    if parent.exists():
      if not parent.is_dir():
        raise WorkdirError(
          f'cannot create workdir {workdir}: {parent} is a file; use another '
          '--workdir'
        )
      break


def _write_config_record(config, workdir: epath.Path):
  """Writes config.json through a temporary file, so a kill never tears it."""
  record = {'config': config_lib.to_dict(config), **code_version()}
  tmp = workdir / '.config.json.tmp'
  tmp.write_text(json.dumps(record, indent=2))
  tmp.replace(workdir / 'config.json')


def _resume_step(mngr) -> int | None:
  """The newest good checkpoint; newer, bad ones are deleted."""
  good = checkpoint.latest_good_step(mngr)
  for step in mngr.all_steps():
    if good is None or step > good:
      mngr.delete(step)
  return good


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, dict[str, float]]:
  """Trains and evaluates a run, resuming from `workdir` when it holds one.

  Args:
    config: the run config (see `configs/digits.py`).
    workdir: where config, metrics, TensorBoard files and checkpoints go.

  Returns:
    model name -> final {'train_loss', 'test_loss', 'test_accuracy'}; empty
    when the run stopped early on SIGTERM (it resumes on the next launch).

  Raises:
    ConfigError: for bad config values, before anything is written.
    WorkdirBusyError: when another live run holds the workdir.
    NonFiniteError: when training diverges (the last good checkpoint stays).
    WorkdirError: when the workdir cannot be written (a file in its place, a
      full disk); checkpoints already committed stay good.
  """
  start_time = time.time()
  config_lib.validate(
    config,
    device_count=jax.device_count(),
    process_count=jax.process_count(),
  )
  workdir = epath.Path(workdir)
  _check_workdir(workdir)
  _check_resume_config(config, workdir)
  branch = _branch_source(config)
  setup = build(
    config, first_step=branch[1] if branch else 0, workdir=os.fspath(workdir)
  )
  template = _state_template(setup)
  needed = averaging.check_memory(
    setup.averagers,
    {'params': template.params, 'batch_stats': template.batch_stats},
    config.averaging.memory_budget_mb,
  )
  logging.info('Averaged models hold %.1f MiB.', needed / 2**20)

  lock = _hold_workdir(workdir)
  is_main = jax.process_index() == 0
  if is_main and not (workdir / 'config.json').exists():
    _write_config_record(config, workdir)
  mngr = checkpoint.manager(
    os.fspath(workdir), keep=config.checkpoint.keep, owner=True
  )
  writer = MetricWriter(os.fspath(workdir), enabled=is_main)
  preemption = _Preemption()
  try:
    resume_step = _resume_step(mngr)
    if resume_step is not None:
      logging.info('Resuming from checkpoint at step %d.', resume_step)
      state, _ = checkpoint.restore(mngr, resume_step, template)
      start = resume_step
    elif branch is not None:
      logging.info('Branching from %s at step %d.', *branch)
      state = branch_state(setup, *branch)
      start = branch[1]
    else:
      state = init_state(setup)
      start = 0
    # Lines of the steps to be redone go, and so do the lines of an attempt
    # killed before its first checkpoint; the probe of theta_start comes
    # after that checkpoint, so it is redone too.
    writer.truncate_after(start, redo=('probe',))
    return _train_loop(setup, state, mngr, writer, lock, preemption, start_time)
  except OSError as e:
    writer.discard()  # the queued lines would only fail again
    good = checkpoint.latest_committed_step(mngr)
    resume = f'step {good}' if good is not None else 'the start'
    raise WorkdirError(
      f'writing to {workdir} failed ({_first_line(e)}); committed checkpoints '
      f'are intact: free space or fix the workdir and relaunch to resume '
      f'from {resume}'
    ) from e
  finally:
    preemption.close()
    writer.close()
    mngr.close()
    if lock is not None:
      lock.release()


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _log_window(config, writer, window, first, step, elapsed):
  """Writes the mean train metrics of the steps first..step."""
  scalars = _summarise(window, first, step)
  rate = (step - first + 1) / max(elapsed, 1e-9)
  scalars['steps_per_sec'] = rate
  scalars['eta_sec'] = (config.num_steps - step) / rate
  logging.info(
    'step %d/%d  loss %.4f  acc %.4f  lr %.4g  %.1f steps/s  %.0fs left',
    step,
    config.num_steps,
    scalars['train/loss'],
    scalars['train/accuracy'],
    scalars['train/learning_rate'],
    rate,
    scalars['eta_sec'],
  )
  writer.write(step, 'train', scalars)


def _train_loop(setup, state, mngr, writer, lock, preemption, start_time):
  """Runs the steps from the state's step to `num_steps`."""
  config = setup.config
  step = int(state.step)
  evals = set(eval_steps(config))
  meta = {'config_hash': config_lib.config_hash(config)}
  window, window_time = [], time.time()
  results = None

  if step < config.num_steps:
    logging.info('Compiling the train step (first step %d).', step + 1)
  probe_at = set(probing.probe_steps(config.probes, config.num_steps))
  fixed = None
  batches = setup.datasets.train.iterate(step, config.num_steps - step)
  for batch in batches:
    if step in probe_at:
      if fixed is None:
        fixed = probing.choose_batches(
          config.probes, setup.datasets, config.batch_size
        )
      writer.write(step, 'probe', _probe(setup, state, step, batch, fixed))
      writer.flush()
      _plot_probe_trajectory(setup, writer)
    state, metrics = setup.train_step(state, _to_global(setup, batch))
    window.append(metrics)
    step += 1

    stop = preemption.should_stop(step)
    at_eval = step in evals
    at_checkpoint = at_eval or stop or step % config.checkpoint.every == 0
    if step % config.log_every == 0 or at_checkpoint:
      first = step - len(window) + 1
      _log_window(
        config, writer, window, first, step, time.time() - window_time
      )
      window, window_time = [], time.time()
      writer.flush()
      if lock is not None:
        lock.heartbeat()
    if at_eval:
      scalars, results = _eval_scalars(setup, state, step)
      scalars['wall_sec'] = time.time() - start_time
      writer.write(step, 'eval', scalars)
      logging.info(
        'eval at step %d: %s',
        step,
        '  '.join(
          f'{k} {v:.4f}' for k, v in scalars.items() if k.startswith('eval/')
        ),
      )
    if at_checkpoint:
      # Metrics up to `step` become durable before the checkpoint commits.
      writer.flush()
      check_state_finite(setup, state, step)
      checkpoint.save(mngr, step, state, {'step': step, **meta})
    if stop:
      logging.warning('Preempted: saved step %d; relaunch to resume.', step)
      return {}

  if results is None:
    _, results = _eval_scalars(setup, state, step)
  return _final_results(setup, results, step, time.time() - start_time)


def _probe(setup, state, step, batch, fixed):
  """Runs the probes at theta_step on the batch about to be trained on."""
  config = setup.config
  logging.info('Probing at step %d.', step)
  direction = None
  if config.probes.direction == 'update':
    direction = setup.update_direction(state, _to_global(setup, batch))
  out_dir = None
  if jax.process_index() == 0:
    out_dir = epath.Path(setup.workdir) / 'probes'
    out_dir.mkdir(parents=True, exist_ok=True)
  return probing.run_probes(
    cfg=config.probes,
    model=setup.model,
    params=state.params,
    batch_stats=state.batch_stats,
    step=step,
    direction_batch=batch,
    previous_batch=setup.datasets.train.batch(step - 1) if step else None,
    fixed=fixed,
    to_device=functools.partial(_to_global, setup),
    train_lr=float(setup.schedule(step)),
    update_direction=direction,
    out_dir=out_dir,
  )


def _plot_probe_trajectory(setup, writer):
  """Redraws the fixed-batch losses along the trajectory (process 0)."""
  if jax.process_index() == 0 and setup.config.probes.figures:
    records = read_metrics(setup.workdir, 'probe')
    probing.plot_trajectory(records, epath.Path(setup.workdir) / 'probes')


def _final_results(setup, results, step, wall):
  """Prints the final table and returns it as a dict."""
  rows, final = [], {}
  for name in results['test']:
    bn = RAW if name == RAW else setup.averagers[name].bn_mode
    final[name] = {
      'train_loss': results['train'][name]['loss'],
      'test_loss': results['test'][name]['loss'],
      'test_accuracy': results['test'][name]['accuracy'],
    }
    rows.append(
      {
        'model': name,
        'bn_stats': 'live' if name == RAW else bn,
        'train loss': f'{final[name]["train_loss"]:.4f}',
        'test loss': f'{final[name]["test_loss"]:.4f}',
        'test top-1': f'{100 * final[name]["test_accuracy"]:.2f}%',
        'steps': step,
        'wall time': f'{wall:.1f}s',
      }
    )
  if jax.process_index() == 0:
    print('\nFinal results\n' + _format_table(rows), flush=True)
  return final
