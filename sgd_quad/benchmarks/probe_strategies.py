"""Benchmark of the line-search strategies for evaluating K step sizes.

The line search evaluates the loss at theta - eta g for K step sizes. vmapping
over eta batches the weights, which turns every convolution into a grouped
convolution; on some backends that is several times slower than K plain
forward passes. This benchmark times, side by side in one process and with
interleaved repeats after a warm-up, the loss at K = 32 step sizes with full
vmap, chunked vmap at several chunk sizes and sequential evaluation, against
the baseline of K separate calls of one jitted forward pass of the same batch,
and reports medians, spreads and ratios to the baseline.

Run: python -m sgd_quad.benchmarks.probe_strategies [--num_etas 32]
`pick_fastest` runs the same measurement and returns the fastest strategy, for
example to set the default of a new backend.
"""

import argparse
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgd_quad.probes import losses as losses_lib
from sgd_quad.probes import sweep

PyTree = Any


class _Block(nn.Module):
  """Basic residual block (two 3x3 convolutions with BatchNorm)."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    y = norm()(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class BenchResNet(nn.Module):
  """Small ResNet for 8x8x1 digits: stem, blocks of 16 and 32, pooled head."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(16, (3, 3), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = _Block(16)(x, train)
    x = _Block(32, strides=2)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def create_benchmark_model(num_classes: int = 10) -> tuple[nn.Module, str]:
  """The digits ResNet of sgd_quad.models if it exists, else BenchResNet.

  Returns:
    (model, name).
  """
  try:
    from sgd_quad import models  # noqa: PLC0415 (optional, may not exist)

    return models.create_model('resnet_digits', num_classes=num_classes), (
      'resnet_digits'
    )
  except (ImportError, AttributeError, KeyError, ValueError):
    return BenchResNet(num_classes), 'BenchResNet (fallback)'


class Timing(NamedTuple):
  """Wall-clock seconds of one candidate over the repeats.

  Attributes:
    name: display name.
    strategy: 'vmap', 'chunked', 'sequential', or None for a reference row.
    chunk_size: chunk size (1 where it does not apply).
    median_s: median seconds.
    q25_s: 25th percentile.
    q75_s: 75th percentile.
    min_s: fastest repeat.
  """

  name: str
  strategy: str | None
  chunk_size: int
  median_s: float
  q25_s: float
  q75_s: float
  min_s: float


def _setup(model, batch_size, seed=0):
  key = jax.random.key(seed)
  k_img, k_lab, k_init = jax.random.split(key, 3)
  batch = {
    'image': jax.random.normal(k_img, (batch_size, 8, 8, 1)),
    'label': jax.random.randint(k_lab, (batch_size,), 0, 10),
  }
  init = jax.jit(lambda k, x: model.init(k, x, train=False))
  variables = init(k_init, batch['image'])
  return variables['params'], variables.get('batch_stats', {}), batch


def _candidates(model, params, batch_stats, batch, num_etas, chunk_sizes, mode):
  """Returns [(name, strategy, chunk, run)] with `run()` blocking."""
  loss_fn = losses_lib.make_loss_fn(model, batch_stats, bn_mode=mode)
  forward = jax.jit(loss_fn)
  direction = jax.jit(jax.grad(loss_fn))(params, batch)
  etas = jnp.geomspace(1e-3, 10.0, num_etas)

  def k_forwards():
    out = [forward(params, batch) for _ in range(num_etas)]
    return jax.block_until_ready(out)

  rows = [('K x forward (baseline)', None, 1, k_forwards)]
  configs = [('vmap', num_etas)]
  configs += [('chunked', c) for c in chunk_sizes if c < num_etas]
  configs += [('sequential', 1)]
  for strategy, chunk in configs:
    fn = jax.jit(
      lambda p, d, b, e, s=strategy, c=chunk: sweep.losses_along(
        loss_fn, p, d, [b], e, strategy=s, chunk_size=c
      )
    )
    name = strategy if strategy != 'chunked' else f'chunked({chunk})'
    run = lambda fn=fn: jax.block_until_ready(
      fn(params, direction, batch, etas)
    )
    rows.append((name, strategy, chunk, run))

  # Reference: the whole probe (gradient, HVP, loss at theta, K losses).
  grid = np.concatenate([[0.0], np.geomspace(1e-3, 10.0, num_etas - 1)])
  full = lambda: jax.block_until_ready(
    sweep.line_search(
      model, params, batch_stats, batch, [], grid, bn_mode=mode
    ).losses
  )
  rows.append(('line_search, auto (all)', None, 1, full))
  return rows


def time_strategies(
  model: nn.Module | None = None,
  params: PyTree | None = None,
  batch_stats: PyTree | None = None,
  batch: losses_lib.Batch | None = None,
  *,
  num_etas: int = 32,
  chunk_sizes: Sequence[int] = (2, 4, 8, 16),
  repeats: int = 7,
  batch_size: int = 128,
  bn_mode: str = 'batch',
  seed: int = 0,
) -> list[Timing]:
  """Times every strategy for K step sizes against K forward passes.

  Each candidate is compiled and run once (warm-up), then all candidates are
  timed in turn, `repeats` rounds in a shuffled order per round, so slow
  phases of a shared machine hit all of them alike.

  Args:
    model: Linen classifier; None builds `create_benchmark_model()` with
      fresh parameters and a random 8x8x1 batch of `batch_size`.
    params: its parameters (with model).
    batch_stats: its BatchNorm statistics (with model).
    batch: the batch (with model).
    num_etas: K.
    chunk_sizes: chunk sizes for 'chunked' (those >= K are skipped).
    repeats: timed rounds.
    batch_size: batch size of the built-in setup.
    bn_mode: 'batch' or 'running'.
    seed: seed of the built-in setup and of the shuffling.

  Returns:
    Timings: the K-forward baseline first, then the strategies, then the
    whole `line_search` with the backend's default strategy (reference).
  """
  if model is None:
    model, _ = create_benchmark_model()
    params, batch_stats, batch = _setup(model, batch_size, seed)
  rows = _candidates(
    model, params, batch_stats, batch, num_etas, chunk_sizes, bn_mode
  )
  for _, _, _, run in rows:
    run()
    run()
  times = {name: [] for name, *_ in rows}
  order = list(range(len(rows)))
  rng = random.Random(seed)
  for _ in range(repeats):
    rng.shuffle(order)
    for i in order:
      name, _, _, run = rows[i]
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  out = []
  for name, strategy, chunk, _ in rows:
    t = np.asarray(times[name])
    q25, med, q75 = np.percentile(t, [25, 50, 75])
    out.append(Timing(name, strategy, chunk, med, q25, q75, t.min()))
  return out


def fastest(timings: Sequence[Timing]) -> Timing:
  """The strategy row with the lowest median (reference rows excluded)."""
  return min(
    (t for t in timings if t.strategy is not None), key=lambda t: t.median_s
  )


def pick_fastest(
  model: nn.Module | None = None,
  params: PyTree | None = None,
  batch_stats: PyTree | None = None,
  batch: losses_lib.Batch | None = None,
  **kwargs: Any,
) -> tuple[str, int]:
  """Measures the strategies on the current backend and returns the fastest.

  Args:
    model, params, batch_stats, batch: as for `time_strategies` (None: the
      built-in small ResNet).
    **kwargs: passed to `time_strategies`.

  Returns:
    (strategy, chunk_size), ready for `line_search(strategy=...,
    chunk_size=...)`.
  """
  best = fastest(time_strategies(model, params, batch_stats, batch, **kwargs))
  return best.strategy, best.chunk_size


def format_table(timings: Sequence[Timing]) -> str:
  """A text table: median, interquartile range, min and ratio to baseline."""
  base = timings[0].median_s
  lines = [
    f'{"candidate":<24}{"median ms":>10}{"IQR ms":>16}{"min ms":>9}'
    f'{"x base":>8}'
  ]
  for t in timings:
    iqr = f'{1e3 * t.q25_s:.1f}-{1e3 * t.q75_s:.1f}'
    lines.append(
      f'{t.name:<24}{1e3 * t.median_s:>10.1f}{iqr:>16}'
      f'{1e3 * t.min_s:>9.1f}{t.median_s / base:>8.2f}'
    )
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None, out: Callable = print) -> None:
  """Prints the strategy timings of this backend."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_etas', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=9)
  parser.add_argument(
    '--bn_mode', default='batch', choices=('batch', 'running')
  )
  args = parser.parse_args(argv)

  model, model_name = create_benchmark_model()
  params, batch_stats, batch = _setup(model, args.batch_size)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  out(
    f'backend {jax.default_backend()} ({jax.devices()[0].device_kind}), '
    f'model {model_name} ({num_params} params), batch {args.batch_size}, '
    f'K = {args.num_etas}, bn_mode {args.bn_mode}, {args.repeats} repeats'
  )
  timings = time_strategies(
    model,
    params,
    batch_stats,
    batch,
    num_etas=args.num_etas,
    repeats=args.repeats,
    bn_mode=args.bn_mode,
  )
  out(format_table(timings))
  best = fastest(timings)
  out(
    f'fastest: {best.name} ({best.median_s / timings[0].median_s:.2f}x the '
    f'{args.num_etas} forward passes)'
  )
  strategy, chunk = sweep.resolve_strategy('auto')
  out(
    f'default for {jax.default_backend()}: strategy={strategy!r}, '
    f'chunk_size={chunk} (sweep.DEFAULT_STRATEGIES); the last row is the '
    'whole probe: gradient, HVP, loss at theta and the K losses'
  )


if __name__ == '__main__':
  main()
