"""Tests of sgd_quad.averaging: closed-form values, exactness, jit and config.

Each averager is checked against values computed by hand (numpy, float64 for
the running averages, float32 for the exact multi-point means) after one, two
and many updates; then under jit with a donated state, in the optax wrapper,
and through the config block's validation and memory check.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sgd_quad import averaging
from sgd_quad.errors import ConfigError

NUM_STEPS = 40


def _iterates(num: int = NUM_STEPS + 1, seed: int = 0) -> list[dict]:
  """theta_0 .. theta_{num-1}: small random pytrees with two leaves."""
  rng = np.random.default_rng(seed)
  return [
    {
      'w': rng.normal(size=(3, 2)).astype(np.float32),
      'b': {'x': rng.normal(size=(4,)).astype(np.float32)},
    }
    for _ in range(num)
  ]


def _run(averager, thetas, jit=True):
  """States after init(theta_0) and each update(theta_t), t = 1, 2, ..."""
  update = jax.jit(averager.update) if jit else averager.update
  states = [averager.init(thetas[0])]
  for theta in thetas[1:]:
    states.append(update(theta, states[-1]))
  return states


def _results(averager, states):
  result = jax.jit(averager.result)
  return [jax.device_get(result(s)) for s in states]


def _assert_tree_close(actual, expected, rtol=1e-5, atol=1e-6):
  jax.tree.map(
    lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol),
    actual,
    expected,
  )


def _assert_tree_equal(actual, expected):
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def _ema_reference(thetas, decay, start, period, warmup, debias):
  """Float64 EMA by the docstring's formulas; None before the start."""
  out, avg, n, prod = [], None, 0, 1.0
  for t, theta in enumerate(thetas):
    x = jax.tree.map(lambda a: a.astype(np.float64), theta)
    if t >= start and (t - start) % period == 0:
      if avg is None and not debias:
        avg, prod = x, 0.0
      else:
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        if avg is None:
          avg = jax.tree.map(np.zeros_like, x)
        avg = jax.tree.map(lambda a, b, d=d: d * a + (1 - d) * b, avg, x)
        prod *= d
        n += 1
    scale = 1.0 - prod
    out.append(
      None if avg is None else jax.tree.map(lambda a, s=scale: a / s, avg)
    )
  return out


def test_ema_one_and_two_updates_by_hand():
  thetas = _iterates(3)
  states = _run(averaging.ema(0.9), thetas)
  results = _results(averaging.ema(0.9), states)

  _assert_tree_equal(results[0][0], thetas[0])
  one = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, thetas[0], thetas[1])
  _assert_tree_close(results[1][0], one)
  two = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, one, thetas[2])
  _assert_tree_close(results[2][0], two)
  assert all(valid for _, valid in results)
  assert [int(s.count) for s in states] == [0, 1, 2]


@pytest.mark.parametrize('warmup', [False, True])
@pytest.mark.parametrize('debias', [False, True])
def test_ema_many_updates(warmup, debias):
  thetas = _iterates()
  averager = averaging.ema(0.8, warmup=warmup, debias=debias)
  results = _results(averager, _run(averager, thetas))
  expected = _ema_reference(thetas, 0.8, 0, 1, warmup, debias)
  for (avg, valid), ref in zip(results, expected, strict=True):
    assert valid
    _assert_tree_close(avg, ref)


def test_ema_warmup_first_decays():
  thetas = [{'x': np.float32(v)} for v in (0.0, 10.0, 20.0)]
  averager = averaging.ema(0.99, warmup=True)
  results = _results(averager, _run(averager, thetas))
  # The copy, then decays min(0.99, 1/10) and min(0.99, 2/11).
  first = 0.1 * 0.0 + 0.9 * 10.0
  second = 2 / 11 * first + 9 / 11 * 20.0
  np.testing.assert_allclose(
    [r[0]['x'] for r in results], [0.0, first, second], rtol=1e-6
  )


def test_ema_debias_matches_optax():
  thetas = _iterates(12)
  averager = averaging.ema(0.9, debias=True)
  results = _results(averager, _run(averager, thetas))
  tx = optax.ema(0.9, debias=True)
  state = tx.init(thetas[0])
  for theta, (avg, _) in zip(thetas, results, strict=True):
    expected, state = tx.update(theta, state)
    _assert_tree_close(avg, expected)


def test_ema_debias_one_update_by_hand():
  thetas = [{'x': np.float32(2.0)}, {'x': np.float32(4.0)}]
  averager = averaging.ema(0.5, debias=True)
  results = _results(averager, _run(averager, thetas))
  # Zero start: mu = 0.5 * 2 = 1, / (1 - 0.5); mu = 0.5 + 2, / (1 - 0.25).
  np.testing.assert_allclose(results[0][0]['x'], 2.0)
  np.testing.assert_allclose(results[1][0]['x'], 2.5 / 0.75, rtol=1e-6)


def test_ema_start_step_and_period():
  thetas = _iterates(20)
  averager = averaging.ema(0.7, start_step=3, period=4)
  results = _results(averager, _run(averager, thetas))
  expected = _ema_reference(thetas, 0.7, 3, 4, False, False)
  for t, ((avg, valid), ref) in enumerate(zip(results, expected, strict=True)):
    assert bool(valid) == (t >= 3)
    if ref is not None:
      _assert_tree_close(avg, ref)
  # A copy of theta_3, unchanged until step 7.
  for t in range(3, 7):
    _assert_tree_equal(results[t][0], thetas[3])
  manual = jax.tree.map(lambda a, b: 0.7 * a + 0.3 * b, thetas[3], thetas[7])
  _assert_tree_close(results[7][0], manual)


def test_swa_is_mean_of_snapshots():
  thetas = _iterates()
  averager = averaging.swa(start_step=2, period=3)
  results = _results(averager, _run(averager, thetas))
  for t, (avg, valid) in enumerate(results):
    assert bool(valid) == (t >= 2)
    if t < 2:
      continue
    taken = [thetas[s] for s in range(2, t + 1, 3)]
    mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *taken)
    _assert_tree_close(avg, mean)
  _assert_tree_equal(results[2][0], thetas[2])
  two = jax.tree.map(lambda a, b: (a + b) / 2, thetas[2], thetas[5])
  _assert_tree_close(results[5][0], two)


def test_swa_from_step_zero_every_step():
  thetas = _iterates(6)
  averager = averaging.swa()
  avg, valid = _results(averager, _run(averager, thetas))[-1]
  assert valid
  mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *thetas)
  _assert_tree_close(avg, mean)


def test_lawa_mean_of_latest_snapshots():
  thetas = _iterates()
  averager = averaging.lawa(3, period=2, start_step=1)
  results = _results(averager, _run(averager, thetas))
  for t, (avg, valid) in enumerate(results):
    assert bool(valid) == (t >= 1)
    if t < 1:
      continue
    taken = [thetas[s] for s in range(1, t + 1, 2)][-3:]
    mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *taken)
    _assert_tree_close(avg, mean)
  # One snapshot, then two, then the three latest.
  _assert_tree_equal(results[1][0], thetas[1])
  _assert_tree_close(
    results[3][0], jax.tree.map(lambda a, b: (a + b) / 2, thetas[1], thetas[3])
  )


def _manual_mean(thetas, t, gap, num_points):
  """Float32 (theta_t + theta_{t-k} + ...) * float32(1 / m), in that order."""

  def mean(*xs):
    total = xs[0].astype(np.float32)
    for x in xs[1:]:
      total = total + x.astype(np.float32)
    return total * np.float32(1.0 / num_points)

  picked = [thetas[t - j * gap] for j in range(num_points)]
  return jax.tree.map(mean, *picked)


EVAL_STEPS = (0, 2, 3, 7, 8, 9, 15, 16, 22, 30, 31, 40)


@pytest.mark.parametrize('gap', [1, 3, 7, 16])
def test_two_point_exact_at_every_eval_step(gap):
  thetas = _iterates()
  averager = averaging.two_point(gap, EVAL_STEPS)
  results = _results(averager, _run(averager, thetas))
  for t, (avg, valid) in enumerate(results):
    expect_valid = t in EVAL_STEPS and t >= gap
    assert bool(valid) == expect_valid, t
    if expect_valid:
      manual = jax.tree.map(
        lambda a, b: np.float32(0.5) * (a + b), thetas[t], thetas[t - gap]
      )
      _assert_tree_equal(avg, manual)


def test_two_point_bfloat16_input_averaged_in_float32():
  thetas = [
    jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), th)
    for th in _iterates(12)
  ]
  averager = averaging.two_point(4, [5, 11])
  results = _results(averager, _run(averager, thetas))
  for t in (5, 11):
    avg, valid = results[t]
    assert valid
    manual = _manual_mean(jax.device_get(thetas), t, 4, 2)
    _assert_tree_equal(avg, manual)
    assert jax.tree.leaves(avg)[0].dtype == np.float32


def test_multi_point_exact():
  thetas = _iterates()
  averager = averaging.multi_point(3, 3, EVAL_STEPS)
  results = _results(averager, _run(averager, thetas))
  for t, (avg, valid) in enumerate(results):
    expect_valid = t in EVAL_STEPS and t >= 6
    assert bool(valid) == expect_valid, t
    if expect_valid:
      _assert_tree_equal(avg, _manual_mean(thetas, t, 3, 3))


def test_plan_keeps_only_needed_snapshots():
  evals = range(1000, 10001, 1000)
  plan = averaging.plan_snapshots(2000, 2, evals)
  # theta_e and theta_{e-2000} for e >= 2000; at most three pending at once.
  assert plan.ring_size == 3
  np.testing.assert_array_equal(plan.snapshot_steps, range(0, 10001, 1000))
  np.testing.assert_array_equal(plan.eval_steps, range(2000, 10001, 1000))
  one_gap = averaging.plan_snapshots(3, 2, [3, 6, 9])
  assert one_gap.ring_size == 2


def test_multi_point_without_usable_eval_step_raises():
  with pytest.raises(ValueError, match='never be read'):
    averaging.two_point(10, [3, 9])


def _all_averagers():
  return {
    'ema': averaging.ema(0.9, start_step=2, warmup=True),
    'ema_debias': averaging.ema(0.9, period=3, debias=True),
    'swa': averaging.swa(start_step=1, period=2),
    'lawa': averaging.lawa(3, period=2),
    'two_point': averaging.two_point(3, EVAL_STEPS),
    'multi_point': averaging.multi_point(2, 3, EVAL_STEPS),
  }


@pytest.mark.parametrize('name', list(_all_averagers()))
def test_jit_with_donation_matches_eager_and_traces_once(name):
  averager = _all_averagers()[name]
  thetas = _iterates(8)
  with jax.disable_jit():
    eager = _run(averager, thetas, jit=False)

  traces = []

  def counted(theta, state):
    traces.append(1)
    return averager.update(theta, state)

  update = jax.jit(counted, donate_argnums=1)
  params = jax.device_put(thetas[0])
  state = jax.jit(averager.init)(params)
  for theta in thetas[1:]:
    state = update(theta, state)
  # Same counts, tables and snapshots; float32 accumulators up to fusion.
  _assert_tree_close(state, eager[-1], rtol=1e-6, atol=1e-7)
  assert int(state.count) == 7
  # The state never shared buffers with the params it was built from.
  assert not any(x.is_deleted() for x in jax.tree.leaves(params))

  state = averager.init(params)
  update(thetas[1], state)
  assert not any(x.is_deleted() for x in jax.tree.leaves(params))
  # One trace for every step, and for states from eager and jitted init.
  assert len(traces) == 1


def test_vmap_over_trees():
  thetas = _iterates(5)
  stacked = [jax.tree.map(lambda x: np.stack([x, 2 * x]), th) for th in thetas]
  averager = averaging.ema(0.5, period=2)
  state = jax.jit(jax.vmap(averager.init))(stacked[0])
  update = jax.jit(jax.vmap(averager.update))
  for theta in stacked[1:]:
    state = update(theta, state)
  avg, valid = jax.jit(jax.vmap(averager.result))(state)
  single, _ = _results(averager, _run(averager, thetas))[-1]
  assert valid.tolist() == [True, True]
  _assert_tree_close(jax.tree.map(lambda x: x[0], avg), single)
  doubled = jax.tree.map(lambda x: 2 * x, single)
  _assert_tree_close(jax.tree.map(lambda x: x[1], avg), doubled)


def _quadratic_loss(params):
  return sum(jnp.sum((x - 1.0) ** 2) for x in jax.tree.leaves(params))


def test_optax_wrapper_matches_standalone_averagers():
  averagers = {
    'ema': averaging.ema(0.9),
    'swa': averaging.swa(start_step=2),
    'two_point': averaging.two_point(2, [4, 6]),
  }
  tx = optax.chain(
    optax.clip_by_global_norm(100.0),
    averaging.with_averages(optax.sgd(0.1, momentum=0.9), averagers),
  )
  params = jax.tree.map(jnp.asarray, _iterates(1)[0])
  opt_state = tx.init(params)
  standalone = {n: a.init(params) for n, a in averagers.items()}

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(_quadratic_loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  updates = {n: jax.jit(a.update) for n, a in averagers.items()}
  for _ in range(6):
    params, opt_state = step(params, opt_state)
    standalone = {n: updates[n](params, standalone[n]) for n in averagers}

  found = averaging.averages_from(opt_state)
  assert set(found) == set(averagers)
  for name, averager in averagers.items():
    avg, valid = found[name]
    expected, expected_valid = averager.result(standalone[name])
    assert bool(valid) == bool(expected_valid)
    # Fused into the step, the float32 arithmetic may differ in the last bit.
    _assert_tree_close(avg, expected, rtol=1e-6, atol=1e-7)
  assert bool(found['two_point'][1])
  _assert_tree_equal(
    found['two_point'][0],
    averagers['two_point'].result(standalone['two_point'])[0],
  )


def test_averages_from_without_wrapper_raises():
  state = optax.sgd(0.1).init({'x': jnp.zeros(2)})
  with pytest.raises(ValueError, match='found 0'):
    averaging.averages_from(state)


def test_state_bytes_counts_float32_accumulators():
  tree = {'w': jax.ShapeDtypeStruct((10, 10), jnp.bfloat16)}
  # 100 float32 values plus three 4-byte scalars.
  assert averaging.state_bytes(averaging.ema(0.9), tree) == 400 + 12
  ring = averaging.plan_snapshots(5, 2, [5, 10]).ring_size
  two = averaging.state_bytes(averaging.two_point(5, [5, 10]), tree)
  assert two >= ring * 200 and two < ring * 200 + 200


class _TinyBNNet(nn.Module):
  """Dense -> BatchNorm -> relu -> Dense -> BatchNorm."""

  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(5)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(
      x
    )
    x = nn.Dense(3)(nn.relu(x))
    return nn.BatchNorm(
      use_running_average=not train, momentum=self.bn_momentum
    )(x)


def _direct_batch_stats(params, images):
  """Per-batch mean and biased variance of both BatchNorm inputs, numpy."""
  p = jax.device_get(params)
  x = np.asarray(images, np.float64).reshape(images.shape[0], -1)
  z1 = x @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
  m1, v1 = z1.mean(0), z1.var(0)
  bn = p['BatchNorm_0']
  h = (z1 - m1) / np.sqrt(v1 + 1e-5) * bn['scale'] + bn['bias']
  z2 = np.maximum(h, 0) @ p['Dense_1']['kernel'] + p['Dense_1']['bias']
  return {
    'BatchNorm_0': {'mean': m1, 'var': v1},
    'BatchNorm_1': {'mean': z2.mean(0), 'var': z2.var(0)},
  }


def test_recompute_batch_stats_is_mean_of_batch_statistics():
  model = _TinyBNNet()
  rng = np.random.default_rng(1)
  batches = [
    {
      'image': (rng.normal(size=(16, 2, 2)) * (1 + i) + i).astype(np.float32),
      'label': np.zeros(16, np.int32),
    }
    for i in range(3)
  ]
  # Random weights of the right shapes, without compiling model.init.
  shapes = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), batches[0]['image']
  )
  params = jax.tree.map(
    lambda s: rng.normal(size=s.shape).astype(np.float32), shapes['params']
  )

  stats = averaging.recompute_batch_stats(model, params, batches)
  per_batch = [_direct_batch_stats(params, b['image']) for b in batches]
  expected = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *per_batch)
  _assert_tree_close(stats, expected, rtol=1e-4, atol=1e-5)
  # Not a momentum-weighted running average of the same batches.
  assert not np.allclose(
    stats['BatchNorm_0']['mean'], per_batch[-1]['BatchNorm_0']['mean']
  )


def test_recompute_batch_stats_needs_bn_momentum():
  class NoMomentum(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      return nn.BatchNorm(use_running_average=not train)(x)

  with pytest.raises(ValueError, match='bn_momentum'):
    averaging.recompute_batch_stats(
      NoMomentum(), {}, [{'image': np.zeros((2, 3))}]
    )


EVALS = list(range(0, 101, 10))


def _config(**overrides) -> ml_collections.ConfigDict:
  cfg = averaging.default_config()
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def test_default_config_is_valid_and_off():
  cfg = averaging.default_config()
  averaging.validate(cfg, num_steps=100, eval_steps=EVALS)
  assert averaging.build_averagers(cfg, num_steps=100, eval_steps=EVALS) == {}


def test_build_averagers_names_and_modes():
  cfg = _config(
    ema_decays=(0.999, 0.9),
    swa=True,
    swa_bn='recompute',
    lawa_snapshots=5,
    lawa_period=10,
    two_point_gaps=(20, 40),
    two_point_bn='live',
    multi_point_count=3,
    multi_point_gap=20,
  )
  models = averaging.build_averagers(cfg, num_steps=100, eval_steps=EVALS)
  assert list(models) == [
    'ema_0.999',
    'ema_0.9',
    'swa',
    'lawa_5x10',
    'two_point_k20',
    'two_point_k40',
    'multi_point_3x20',
  ]
  assert models['swa'].bn_mode == 'recompute'
  assert models['two_point_k40'].bn_mode == 'live'
  assert models['ema_0.999'].bn_mode == 'average'


BAD_CONFIGS = {
  'decay_one': ({'ema_decays': (0.9, 1.0)}, 'averaging.ema_decays'),
  'decay_negative': ({'ema_decays': (-0.1,)}, 'averaging.ema_decays'),
  'ema_period_zero': ({'ema_period': 0}, 'averaging.ema_period'),
  'swa_period_negative': ({'swa_period': -2}, 'averaging.swa_period'),
  'lawa_period_zero': ({'lawa_period': 0}, 'averaging.lawa_period'),
  'lawa_snapshots_negative': (
    {'lawa_snapshots': -1},
    'averaging.lawa_snapshots',
  ),
  'two_point_gap_zero': ({'two_point_gaps': (0,)}, 'averaging.two_point_gaps'),
  'multi_point_gap_zero': (
    {'multi_point_count': 3, 'multi_point_gap': 0},
    'averaging.multi_point_gap',
  ),
  'multi_point_count_one': (
    {'multi_point_count': 1},
    'averaging.multi_point_count',
  ),
  'ema_start_past_end': (
    {'ema_decays': (0.9,), 'ema_start': 101},
    'averaging.ema_start',
  ),
  'swa_start_past_end': (
    {'swa': True, 'swa_start': 500},
    'averaging.swa_start',
  ),
  'unknown_bn_mode': ({'ema_bn': 'running'}, 'averaging.ema_bn'),
  'gap_larger_than_run': (
    {'two_point_gaps': (101,)},
    'averaging.two_point_gaps',
  ),
  'multi_point_span_larger_than_run': (
    {'multi_point_count': 3, 'multi_point_gap': 60},
    'averaging.multi_point_gap',
  ),
  'recompute_batches_zero': (
    {'recompute_batches': 0},
    'averaging.recompute_batches',
  ),
  'budget_zero': ({'memory_budget_mb': 0.0}, 'averaging.memory_budget_mb'),
}


@pytest.mark.parametrize('case', list(BAD_CONFIGS))
def test_validate_rejects(case):
  overrides, field = BAD_CONFIGS[case]
  with pytest.raises(ConfigError) as info:
    averaging.validate(_config(**overrides), num_steps=100, eval_steps=EVALS)
  assert info.value.field == field
  assert field in str(info.value)


def test_validate_lists_bn_modes():
  with pytest.raises(ConfigError, match="'average', 'recompute', 'live'"):
    averaging.validate(_config(swa_bn='batch'), num_steps=100, eval_steps=EVALS)


def test_validate_rejects_gap_never_evaluated():
  # Evaluations at 10..50 only: a gap of 60 fits the run but is never read.
  with pytest.raises(ConfigError) as info:
    averaging.validate(
      _config(two_point_gaps=(60,)), num_steps=100, eval_steps=[10, 30, 50]
    )
  assert info.value.field == 'averaging.two_point_gaps'
  assert 'never be evaluated' in str(info.value)


def test_validate_rejects_unknown_field():
  cfg = averaging.default_config()
  cfg.unlock()
  cfg.ema_decay = 0.9
  with pytest.raises(ConfigError) as info:
    averaging.validate(cfg, num_steps=100, eval_steps=EVALS)
  assert info.value.field == 'averaging.ema_decay'


def test_check_memory():
  variables = {
    'params': {'w': jax.ShapeDtypeStruct((256, 1024), jnp.float32)},
    'batch_stats': {'m': jax.ShapeDtypeStruct((256, 1024), jnp.float32)},
  }
  cfg = _config(ema_decays=(0.99,), two_point_gaps=(20,), two_point_bn='live')
  models = averaging.build_averagers(cfg, num_steps=100, eval_steps=EVALS)
  # EMA of params and stats: 2 MiB. Two-point ring of params, 1 MiB a slot:
  # theta_e, theta_{e-10} and theta_{e-20} are pending at once.
  assert averaging.plan_snapshots(20, 2, EVALS).ring_size == 3
  needed = averaging.check_memory(models, variables, budget_mb=5.1)
  assert 5 * 2**20 <= needed < 5 * 2**20 + 4096

  with pytest.raises(ConfigError) as info:
    averaging.check_memory(models, variables, budget_mb=4.5)
  assert info.value.field == 'averaging.memory_budget_mb'
  assert '5.0 MiB' in str(info.value) and '4.5 MiB' in str(info.value)


_SHARDING_SCRIPT = """
import contextlib
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from sgd_quad import averaging

for axis_type in (AxisType.Auto, AxisType.Explicit):
  mesh = jax.make_mesh((4,), ('d',), axis_types=(axis_type,))
  sharding = NamedSharding(mesh, P('d'))
  tree = {
    'w': jax.device_put(jnp.ones((8, 4), jnp.bfloat16), sharding),
    'b': jax.device_put(jnp.ones((8,)), sharding),
  }
  explicit = axis_type == AxisType.Explicit
  with jax.set_mesh(mesh) if explicit else contextlib.nullcontext():
    for averager in (
      averaging.ema(0.9, period=2),
      averaging.two_point(2, [2, 4]),
    ):
      state = jax.jit(averager.init)(tree)
      update = jax.jit(averager.update, donate_argnums=1)
      for _ in range(3):
        state = update(tree, state)
      average, _ = jax.jit(averager.result)(state)
      for leaf in jax.tree.leaves((state, average)):
        if 8 in leaf.shape:
          spec = tuple(leaf.sharding.spec) + (None,) * leaf.ndim
          assert spec[leaf.shape.index(8)] == 'd', (leaf.shape, spec)
print('sharded like the params')
"""


def test_states_shard_like_params():
  # Fake CPU devices must be set before jax starts, hence a fresh process.
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  done = subprocess.run(
    [sys.executable, '-c', _SHARDING_SCRIPT],
    env={**os.environ, **env},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'sharded like the params' in done.stdout
