"""Benchmark: the cost of tracking averages in the train step, and of eval.

  python -m sgd_quad.benchmarks.averaging_overhead

For each model (the digits ResNet and a CIFAR ResNet-18 by default), two
train steps are jitted side by side in one process: one that tracks EMA,
SWA and a two-point average, and one that tracks none. They run in
interleaved rounds on the same synthetic batch after a warm-up, and the
report gives the median and spread of the per-step time of each and their
ratio. A second table compares evaluating all models (raw + three averages)
in one compiled call, looped or vmapped over the models, against evaluating
the raw model alone. Ratios, not absolute times, are the result: the
machines are shared and noisy.
"""

import functools
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags

from sgd_quad import averaging, models, optim
from sgd_quad import steps as steps_lib

_MODELS = flags.DEFINE_list(
  'models',
  ['resnet_digits:8x8x1:128', 'resnet18_cifar:32x32x3:16'],
  'name:HxWxC:batch entries to measure.',
)
_ROUNDS = flags.DEFINE_integer('rounds', 15, 'Interleaved timing rounds.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per round and variant.')


def _averagers(eval_every: int = 100) -> dict[str, averaging.AveragedModel]:
  cfg = averaging.default_config()
  cfg.ema_decays = (0.999,)
  cfg.swa = True
  cfg.two_point_gaps = (200,)
  eval_steps = list(range(eval_every, 10_000 + 1, eval_every))
  return averaging.build_averagers(cfg, num_steps=10_000, eval_steps=eval_steps)


def _state(model, tx, shape, avgs):
  variables = jax.jit(
    lambda k: model.init(k, jnp.zeros((1, *shape)), train=False)
  )(jax.random.key(0, impl='rbg'))
  params, stats = variables['params'], variables['batch_stats']
  return steps_lib.TrainState(
    step=jnp.int32(0),
    params=params,
    batch_stats=stats,
    opt_state=tx.init(params),
    averages={
      n: a.averager.init(averaging.variables_to_average(variables, a.bn_mode))
      for n, a in avgs.items()
    },
  )


def time_interleaved(
  fns: dict[str, Callable[[], None]], rounds: int
) -> dict[str, list[float]]:
  """Runs each function once per round, in turn; returns seconds per run."""
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def _summary(samples: Sequence[float]) -> str:
  q1, med, q3 = np.percentile(samples, [25, 50, 75])
  return f'{1e3 * med:8.2f} ms (IQR {1e3 * q1:.2f}-{1e3 * q3:.2f})'


def measure_train_overhead(name: str, shape, batch_size: int):
  """Median step time with and without averages, and their ratio."""
  model = models.create_model(name, num_classes=10)
  schedule = optax.constant_schedule(0.1)
  opt_cfg = ml_collections.ConfigDict(
    dict(
      momentum=0.9,
      nesterov=False,
      weight_decay=5e-4,
      decoupled_weight_decay=False,
    )
  )
  tx = optim.create_optimizer(opt_cfg, schedule)
  rng = np.random.default_rng(0)
  batch = {
    'image': jnp.asarray(rng.normal(size=(batch_size, *shape)), jnp.float32),
    'label': jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32),
  }
  variants = {'none': {}, 'ema+swa+two_point': _averagers()}
  runners = {}
  for label, avgs in variants.items():
    step = jax.jit(
      functools.partial(
        steps_lib.train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        averagers=avgs,
        label_smoothing=0.0,
        ghost_batch_size=0,
      ),
      donate_argnums=0,
    )
    holder = {'state': _state(model, tx, shape, avgs)}

    def run(step=step, holder=holder):
      for _ in range(_STEPS.value):
        holder['state'], metrics = step(holder['state'], batch)
      jax.block_until_ready(metrics)

    run()  # compile and warm up
    runners[label] = run
  times = time_interleaved(runners, _ROUNDS.value)
  per_step = {k: [t / _STEPS.value for t in v] for k, v in times.items()}
  ratio = statistics.median(per_step['ema+swa+two_point']) / statistics.median(
    per_step['none']
  )
  ratios = [
    a / b
    for a, b in zip(
      per_step['ema+swa+two_point'], per_step['none'], strict=True
    )
  ]
  print(f'\n{name} {shape} batch {batch_size}: train step')
  for label, samples in per_step.items():
    print(f'  {label:20s} {_summary(samples)}')
  print(
    f'  ratio averaged/none: {ratio:.3f} (per-round ratios: median '
    f'{statistics.median(ratios):.3f}, min {min(ratios):.3f}, '
    f'max {max(ratios):.3f})'
  )

  state = _state(model, tx, shape, variants['ema+swa+two_point'])
  measure_eval_cost(model, state, variants['ema+swa+two_point'], batch)


def measure_eval_cost(model, state, avgs, batch):
  """Eval of all models (looped or vmapped) relative to the raw one alone."""
  batch = dict(batch, mask=jnp.ones(batch['label'].shape, jnp.float32))
  variables, _ = jax.jit(
    functools.partial(steps_lib.model_variables, averagers=avgs)
  )(state)
  raw_only = {'raw': variables['raw']}
  looped = jax.jit(functools.partial(steps_lib.eval_step, model=model))

  def vmapped(variables, batch):
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *variables.values())
    apply = lambda v: steps_lib.eval_step({'m': v}, batch, model=model)['m']
    return jax.vmap(apply)(stacked)

  vmapped = jax.jit(vmapped)
  fns = {
    'raw only': lambda: jax.block_until_ready(looped(raw_only, batch)),
    f'{len(variables)} models, loop': lambda: jax.block_until_ready(
      looped(variables, batch)
    ),
    f'{len(variables)} models, vmap': lambda: jax.block_until_ready(
      vmapped(variables, batch)
    ),
  }
  for fn in fns.values():
    fn()
  times = time_interleaved(fns, 3 * _ROUNDS.value)
  base = statistics.median(times['raw only'])
  print('  eval of one batch')
  for label, samples in times.items():
    ratio = statistics.median(samples) / base
    print(f'  {label:20s} {_summary(samples)}  x{ratio:.2f} of raw only')


def main(argv):
  del argv
  print(f'backend: {jax.default_backend()}, devices: {jax.device_count()}')
  for entry in _MODELS.value:
    name, shape, batch = entry.split(':')
    shape = tuple(int(x) for x in shape.split('x'))
    measure_train_overhead(name, shape, int(batch))


if __name__ == '__main__':
  app.run(main)
