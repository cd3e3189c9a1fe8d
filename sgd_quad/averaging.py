"""Iterate averaging: EMA, SWA, LAWA and two-point (multi-point) averages.

Every averaging rule is an `Averager`, a factory-made triple of pure functions
in optax's shape: `init(theta_0)` builds a small NamedTuple state whose `count`
is 0, `update(theta_t, state)` is called after every optimizer update t = 1,
2, ... (so `state.count == t`), and `result(state)` returns the averaged tree
with a scalar boolean saying whether it is defined yet. All three work on any
pytree (the `params` collection, or `{'params', 'batch_stats'}`), under jit,
vmap and donation, with plain tree maps that shard like the parameters.
Averages accumulate in float32 whatever the input dtype; snapshot rings keep
the input dtype (they are exact copies) and are combined in float32.

Around the rules sit the pieces a trainer needs: `with_averages`, an optax
wrapper that carries the averages in the optimizer state and exposes them by
name through `averages_from`; `recompute_batch_stats`, BatchNorm statistics
for averaged weights; and the config block (`default_config`, `validate`,
`build_averagers`, `check_memory`) that names each averaged model
(`ema_0.999`, `swa`, `lawa_5x100`, `two_point_k2000`, `multi_point_3x500`)
and says how its BatchNorm statistics are obtained.
"""

import functools
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from sgd_quad.errors import ConfigError

PyTree = Any
AveragerState = Any

BN_MODES = ('average', 'recompute', 'live')


class Averager(NamedTuple):
  """An averaging rule as three pure functions.

  Attributes:
    init: `init(theta_0) -> state`, with `state.count == 0`; the state holds
      fresh buffers (never the input's), so it can be donated.
    update: `update(theta_t, state) -> state`, called after optimizer update
      t; increments `state.count`.
    result: `result(state) -> (average, valid)`: the float32 averaged tree and
      a scalar bool, False while the average is not defined (then the tree's
      values are meaningless).
  """

  init: Callable[[PyTree], AveragerState]
  update: Callable[[PyTree, AveragerState], AveragerState]
  result: Callable[[AveragerState], tuple[PyTree, jax.Array]]


def _zeros_f32(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jnp.zeros_like(x, jnp.float32), tree)


def _ring(tree: PyTree, size: int) -> PyTree:
  """Zeroed snapshot ring: each leaf gains a leading axis of `size`."""
  # Broadcasting zeros_like keeps the leaves' sharding on the trailing axes.
  return jax.tree.map(
    lambda x: jnp.broadcast_to(jnp.zeros_like(x)[None], (size, *jnp.shape(x))),
    tree,
  )


def _write(ring: PyTree, theta: PyTree, slot: jax.Array | int) -> PyTree:
  return jax.tree.map(
    lambda r, x: lax.dynamic_update_index_in_dim(
      r, jnp.asarray(x, r.dtype), slot, 0
    ),
    ring,
    theta,
  )


def _check_schedule(start_step: int, period: int) -> None:
  if int(start_step) != start_step or start_step < 0:
    raise ValueError(f'start_step must be an int >= 0, got {start_step!r}')
  if int(period) != period or period < 1:
    raise ValueError(f'period must be an int >= 1, got {period!r}')


def _is_event(
  count: jax.Array, start_step: int, period: int
) -> jax.Array | bool:
  """Whether step `count` is one of start_step, start_step + period, ..."""
  if start_step == 0 and period == 1:
    return True
  offset = count - start_step
  return (offset >= 0) & (offset % period == 0)


def _when(pred, fold, state, theta):
  """`fold(state, theta)` if `pred` else `state`; no work on skipped steps."""
  if pred is True:
    return fold(state, theta)
  if pred is False:
    return state
  return lax.cond(pred, fold, lambda s, _: s, state, theta)


def _count0() -> jax.Array:
  return jnp.zeros([], jnp.int32)


# Exponential moving average.


class EmaState(NamedTuple):
  """State of `ema`."""

  count: jax.Array  # shape (), int32: optimizer updates seen (t).
  num_averaged: jax.Array  # shape (), int32: iterates folded in so far.
  decay_product: jax.Array  # shape (), float32: product of decays applied.
  average: PyTree  # float32, like theta.


def _ema_result(state: EmaState) -> tuple[PyTree, jax.Array]:
  valid = state.num_averaged > 0
  # Without debiasing the start copy counts as a decay of 0, so this is 1.
  divisor = jnp.where(valid, 1.0 - state.decay_product, 1.0)
  return jax.tree.map(lambda a: a / divisor, state.average), valid


def ema(
  decay: float,
  *,
  start_step: int = 0,
  period: int = 1,
  warmup: bool = False,
  debias: bool = False,
) -> Averager:
  """Exponential moving average of the iterates.

  Averaging happens at steps s, s + c, s + 2c, ... (s = `start_step`,
  c = `period`); beta = `decay` applies once per averaging step, not per
  optimizer step. By default the average starts as a copy of theta_s (as
  torch's AveragedModel does) and then

      avg <- d_n avg + (1 - d_n) theta_t,   t = s + c, s + 2c, ...,

  where n counts the updates already applied after the copy and d_n = beta,
  or with `warmup` d_n = min(beta, (1 + n) / (10 + n)).

  With `debias` (as optax.ema) the average starts at zero and theta_s is its
  first update; the output is divided by the bias 1 - prod_i d_i, which is
  1 - beta^n after n updates without warmup. n then counts theta_s too, and
  the output at step s is theta_s in either mode.

  Args:
    decay: beta, in [0, 1).
    start_step: s, the optimizer step of the first iterate averaged.
    period: c, steps between averaged iterates.
    warmup: use the decay min(beta, (1 + n) / (10 + n)).
    debias: zero start divided by 1 - prod d_i instead of a copy start.

  Returns:
    An `Averager` with `EmaState`; valid from step s on.
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f'decay must be in [0, 1), got {decay!r}')
  _check_schedule(start_step, period)

  def fold(state: EmaState, theta: PyTree) -> EmaState:
    n = state.num_averaged
    updates_done = n if debias else n - 1
    d = jnp.asarray(decay, jnp.float32)
    if warmup:
      n_f = updates_done.astype(jnp.float32)
      d = jnp.minimum(d, (1.0 + n_f) / (10.0 + n_f))
    if not debias:
      d = jnp.where(n == 0, 0.0, d)
    average = jax.tree.map(
      lambda a, x: d * a + (1.0 - d) * jnp.asarray(x, jnp.float32),
      state.average,
      theta,
    )
    return state._replace(
      num_averaged=n + 1,
      decay_product=state.decay_product * d,
      average=average,
    )

  def init(theta: PyTree) -> EmaState:
    state = EmaState(
      count=_count0(),
      num_averaged=_count0(),
      decay_product=jnp.ones([], jnp.float32),
      average=_zeros_f32(theta),
    )
    return _when(start_step == 0, fold, state, theta)

  def update(theta: PyTree, state: EmaState) -> EmaState:
    state = state._replace(count=state.count + 1)
    return _when(_is_event(state.count, start_step, period), fold, state, theta)

  return Averager(init, update, _ema_result)


# Stochastic weight averaging.


class SwaState(NamedTuple):
  """State of `swa`."""

  count: jax.Array  # shape (), int32: optimizer updates seen (t).
  num_averaged: jax.Array  # shape (), int32: iterates in the mean (n).
  mean: PyTree  # float32, like theta.


def _swa_result(state: SwaState) -> tuple[PyTree, jax.Array]:
  return state.mean, state.num_averaged > 0


def swa(*, start_step: int = 0, period: int = 1) -> Averager:
  """Uniform mean of the iterates theta_s, theta_{s+c}, theta_{s+2c}, ...

  The start is included. The mean is kept incrementally, as torch's
  swa_utils does:

      mean_n = mean_{n-1} + (theta - mean_{n-1}) / n,   n = 1, 2, ...

  so that after n iterates mean_n = (1 / n) sum_{i<n} theta_{s+ic}.

  Args:
    start_step: s, the optimizer step of the first iterate averaged.
    period: c, steps between averaged iterates.

  Returns:
    An `Averager` with `SwaState`; valid from step s on.
  """
  _check_schedule(start_step, period)

  def fold(state: SwaState, theta: PyTree) -> SwaState:
    n = state.num_averaged + 1
    n_f = n.astype(jnp.float32)
    mean = jax.tree.map(
      lambda m, x: m + (jnp.asarray(x, jnp.float32) - m) / n_f,
      state.mean,
      theta,
    )
    return state._replace(num_averaged=n, mean=mean)

  def init(theta: PyTree) -> SwaState:
    state = SwaState(_count0(), _count0(), _zeros_f32(theta))
    return _when(start_step == 0, fold, state, theta)

  def update(theta: PyTree, state: SwaState) -> SwaState:
    state = state._replace(count=state.count + 1)
    return _when(_is_event(state.count, start_step, period), fold, state, theta)

  return Averager(init, update, _swa_result)


# Latest weight averaging.


class LawaState(NamedTuple):
  """State of `lawa`."""

  count: jax.Array  # shape (), int32: optimizer updates seen (t).
  num_snapshots: jax.Array  # shape (), int32: snapshots taken so far.
  snapshots: PyTree  # like theta with a leading axis m, theta's dtype.


def _lawa_result(state: LawaState) -> tuple[PyTree, jax.Array]:
  size = jax.tree.leaves(state.snapshots)[0].shape[0]
  available = jnp.minimum(state.num_snapshots, size)
  mask = jnp.arange(size) < available
  divisor = jnp.maximum(available, 1).astype(jnp.float32)

  def mean(ring: jax.Array) -> jax.Array:
    keep = mask.reshape((size,) + (1,) * (ring.ndim - 1))
    total = jnp.sum(jnp.where(keep, ring.astype(jnp.float32), 0.0), axis=0)
    return total / divisor

  return jax.tree.map(mean, state.snapshots), state.num_snapshots > 0


def lawa(num_snapshots: int, *, period: int, start_step: int = 0) -> Averager:
  """Mean of the latest m snapshots taken every c steps (LAWA).

  Snapshots are taken at steps s, s + c, s + 2c, ...; with j snapshots taken
  the average is

      (1 / min(j, m)) sum_{i = max(0, j - m)}^{j - 1} theta_{s + ic},

  that is, the mean of the snapshots available while fewer than m exist.
  Memory: m copies of theta, in theta's dtype.

  Args:
    num_snapshots: m >= 1.
    period: c, steps between snapshots.
    start_step: s, the step of the first snapshot.

  Returns:
    An `Averager` with `LawaState`; valid from step s on.
  """
  if int(num_snapshots) != num_snapshots or num_snapshots < 1:
    raise ValueError(f'num_snapshots must be an int >= 1, got {num_snapshots}')
  _check_schedule(start_step, period)

  def fold(state: LawaState, theta: PyTree) -> LawaState:
    slot = state.num_snapshots % num_snapshots
    return state._replace(
      num_snapshots=state.num_snapshots + 1,
      snapshots=_write(state.snapshots, theta, slot),
    )

  def init(theta: PyTree) -> LawaState:
    state = LawaState(_count0(), _count0(), _ring(theta, num_snapshots))
    return _when(start_step == 0, fold, state, theta)

  def update(theta: PyTree, state: LawaState) -> LawaState:
    state = state._replace(count=state.count + 1)
    return _when(_is_event(state.count, start_step, period), fold, state, theta)

  return Averager(init, update, _lawa_result)


# Two-point and multi-point averages at evaluation steps.


class SnapshotPlan(NamedTuple):
  """Which iterates a multi-point average keeps, and where (static).

  Attributes:
    snapshot_steps: (S,) int32, sorted steps whose iterate is stored.
    snapshot_slots: (S,) int32, ring slot of each stored iterate.
    eval_steps: (E,) int32, sorted evaluation steps t >= (m - 1) k.
    eval_slots: (E, m) int32, slots of theta_t, theta_{t-k}, ... for each.
    ring_size: slots needed: the most snapshots pending at any one time.
  """

  snapshot_steps: np.ndarray
  snapshot_slots: np.ndarray
  eval_steps: np.ndarray
  eval_slots: np.ndarray
  ring_size: int


def plan_snapshots(
  gap: int, num_points: int, eval_steps: Iterable[int]
) -> SnapshotPlan:
  """Plans the snapshots a multi-point average needs at its evaluation steps.

  An evaluation step t >= (m - 1) k needs the iterates t - jk, j = 0..m-1.
  Each one occupies a ring slot from the step it is taken to the last
  evaluation that reads it; slots are reused greedily in step order, which
  gives the fewest slots (the most snapshots pending at any time).

  Args:
    gap: k >= 1, steps between averaged iterates.
    num_points: m >= 1, iterates per average.
    eval_steps: steps at which the average is read; order and repeats do not
      matter; steps before (m - 1) k are dropped.

  Returns:
    A `SnapshotPlan`.

  Raises:
    ValueError: bad gap or count, or no evaluation step at or after (m-1) k.
  """
  if int(gap) != gap or gap < 1:
    raise ValueError(f'gap must be an int >= 1, got {gap!r}')
  if int(num_points) != num_points or num_points < 1:
    raise ValueError(f'num_points must be an int >= 1, got {num_points!r}')
  span = (num_points - 1) * gap
  evals = sorted({int(e) for e in eval_steps if int(e) >= span})
  if not evals:
    raise ValueError(
      f'no evaluation step is at or after (num_points - 1) * gap = {span}, '
      'so the average would never be read'
    )

  last_use = {}
  for e in evals:
    for j in range(num_points):
      step = e - j * gap
      last_use[step] = max(last_use.get(step, -1), e)

  # A slot read at step e may be overwritten from step e + 1 on, because the
  # average is read after update(theta_e) and before update(theta_{e+1}).
  free, busy, slot_of, size = [], [], {}, 0
  for step in sorted(last_use):
    while busy and busy[0][0] < step:
      heapq.heappush(free, heapq.heappop(busy)[1])
    if free:
      slot = heapq.heappop(free)
    else:
      slot, size = size, size + 1
    slot_of[step] = slot
    heapq.heappush(busy, (last_use[step], slot))

  steps = sorted(slot_of)
  return SnapshotPlan(
    snapshot_steps=np.asarray(steps, np.int32),
    snapshot_slots=np.asarray([slot_of[s] for s in steps], np.int32),
    eval_steps=np.asarray(evals, np.int32),
    eval_slots=np.asarray(
      [[slot_of[e - j * gap] for j in range(num_points)] for e in evals],
      np.int32,
    ).reshape(len(evals), num_points),
    ring_size=size,
  )


class MultiPointState(NamedTuple):
  """State of `multi_point` (and `two_point`).

  The plan's tables travel with the ring so that `result` needs the state
  only, and a restored state reads the slots it was written with.
  """

  count: jax.Array  # shape (), int32: optimizer updates seen (t).
  snapshots: PyTree  # like theta with a leading ring axis, theta's dtype.
  snapshot_steps: jax.Array  # (S,) int32: steps stored, sorted.
  snapshot_slots: jax.Array  # (S,) int32: their ring slots.
  eval_steps: jax.Array  # (E,) int32: steps the average is defined at.
  eval_slots: jax.Array  # (E, m) int32: slots of theta_t, theta_{t-k}, ...


def _lookup(table: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Index of `step` in the sorted `table` (clipped) and whether it is there."""
  i = jnp.minimum(jnp.searchsorted(table, step), table.shape[0] - 1)
  return i, table[i] == step


def _multi_point_result(state: MultiPointState) -> tuple[PyTree, jax.Array]:
  i, valid = _lookup(state.eval_steps, state.count)
  slots = state.eval_slots[i]
  num_points = state.eval_slots.shape[1]

  def mean(ring: jax.Array) -> jax.Array:
    # Summed in float32 in the order theta_t, theta_{t-k}, ..., then scaled
    # by float32(1 / m) (XLA would turn a division into this product anyway).
    total = ring[slots[0]].astype(jnp.float32)
    for j in range(1, num_points):
      total = total + ring[slots[j]].astype(jnp.float32)
    return total * np.float32(1.0 / num_points)

  return jax.tree.map(mean, state.snapshots), valid


def multi_point(
  gap: int, num_points: int, eval_steps: Iterable[int]
) -> Averager:
  """Mean of m iterates spaced k apart, at given evaluation steps.

  At every evaluation step t >= (m - 1) k the result is exactly

      (theta_t + theta_{t-k} + ... + theta_{t-(m-1)k}) * float32(1 / m),

  summed in float32 in that order, so for m = 2 it is bitwise
  0.5 * (theta_t + theta_{t-k}). At any other step it is invalid. Only the
  iterates those steps need are stored (see `plan_snapshots`), in a ring of
  `plan.ring_size` slots; a step that stores nothing does no copying.

  Args:
    gap: k >= 1.
    num_points: m >= 1.
    eval_steps: steps at which the result will be read (static).

  Returns:
    An `Averager` with `MultiPointState`.

  Raises:
    ValueError: see `plan_snapshots`.
  """
  plan = plan_snapshots(gap, num_points, eval_steps)

  def observe(state: MultiPointState, theta: PyTree) -> MultiPointState:
    i, hit = _lookup(state.snapshot_steps, state.count)
    slot = state.snapshot_slots[i]
    snapshots = lax.cond(
      hit,
      lambda ring, x: _write(ring, x, slot),
      lambda ring, _: ring,
      state.snapshots,
      theta,
    )
    return state._replace(snapshots=snapshots)

  def init(theta: PyTree) -> MultiPointState:
    snapshots = _ring(theta, plan.ring_size)
    if plan.snapshot_steps[0] == 0:
      snapshots = _write(snapshots, theta, int(plan.snapshot_slots[0]))
    return MultiPointState(
      count=_count0(),
      snapshots=snapshots,
      snapshot_steps=jnp.asarray(plan.snapshot_steps),
      snapshot_slots=jnp.asarray(plan.snapshot_slots),
      eval_steps=jnp.asarray(plan.eval_steps),
      eval_slots=jnp.asarray(plan.eval_slots),
    )

  def update(theta: PyTree, state: MultiPointState) -> MultiPointState:
    return observe(state._replace(count=state.count + 1), theta)

  return Averager(init, update, _multi_point_result)


def two_point(gap: int, eval_steps: Iterable[int]) -> Averager:
  """Two-point average 0.5 * (theta_t + theta_{t-k}) at evaluation steps.

  Same as `multi_point(gap, 2, eval_steps)`: exact (bitwise, in float32) at
  every evaluation step t >= k, invalid elsewhere.

  Args:
    gap: k >= 1.
    eval_steps: steps at which the result will be read (static).

  Returns:
    An `Averager` with `MultiPointState`.
  """
  return multi_point(gap, 2, eval_steps)


_RESULTS = {
  EmaState: _ema_result,
  SwaState: _swa_result,
  LawaState: _lawa_result,
  MultiPointState: _multi_point_result,
}


def average_of(state: AveragerState) -> tuple[PyTree, jax.Array]:
  """The average held by any averager state (every `result` needs the state).

  Args:
    state: an `EmaState`, `SwaState`, `LawaState` or `MultiPointState`.

  Returns:
    (average, valid) as the averager's `result` gives them.
  """
  result = _RESULTS.get(type(state))
  if result is None:
    raise TypeError(f'not an averager state: {type(state).__name__}')
  return result(state)


def state_bytes(averager: Averager, tree: PyTree) -> int:
  """Device memory an averager's state takes for `tree`, computed abstractly.

  Args:
    averager: the averager.
    tree: the tree it will average (arrays or jax.ShapeDtypeStruct).

  Returns:
    Bytes of all state buffers: sum over leaves of size * itemsize.
  """
  shapes = jax.eval_shape(averager.init, tree)
  return sum(
    int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(shapes)
  )


# BatchNorm statistics for averaged weights.


@functools.partial(jax.jit, static_argnums=(0, 1))
def _batch_statistics(
  model: Any, kwargs: tuple, params: PyTree, images: jax.Array
) -> PyTree:
  """One batch's BatchNorm statistics (`model` has bn_momentum = 0)."""
  _, mutated = model.apply(
    {'params': params},
    images,
    train=True,
    mutable=['batch_stats'],
    **dict(kwargs),
  )
  return jax.tree.map(lambda s: s.astype(jnp.float32), mutated['batch_stats'])


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=4)
def _add_batch_statistics(
  model: Any, kwargs: tuple, params: PyTree, images: jax.Array, total: PyTree
) -> PyTree:
  stats = _batch_statistics(model, kwargs, params, images)
  return jax.tree.map(jnp.add, total, stats)


def recompute_batch_stats(
  model: Any,
  params: PyTree,
  batches: Iterable[Mapping[str, Any]],
  *,
  train_kwargs: Mapping[str, Any] | None = None,
) -> PyTree:
  """BatchNorm statistics of the data under (averaged) weights.

  Each of the N batches goes through the model in training mode, and every
  running statistic is set to the mean over the batches of that batch's
  statistic:

      mean = (1/N) sum_b mean_b,   var = (1/N) sum_b var_b,

  where var_b is the biased variance that flax stores. This is what
  torch.optim.swa_utils.update_bn does with momentum=None. It works by
  applying `model.clone(bn_momentum=0.0)`, whose running statistics after one
  training-mode apply are exactly the batch's. Each batch runs through one
  jitted function (compiled once per model and batch shape), so the batches
  are never stacked in memory.

  Args:
    model: a flax Linen module with a `bn_momentum` attribute passed to its
      nn.BatchNorm layers, called as `model.apply(variables, images,
      train=True, mutable=['batch_stats'], **train_kwargs)`.
    params: the `params` collection (for example an averaged one).
    batches: N >= 1 dicts with an 'image' array (more keys are ignored).
    train_kwargs: more keyword arguments for the call; values must be
      hashable (they are static under jit).

  Returns:
    The `batch_stats` collection, float32.
  """
  try:
    probe = model.clone(bn_momentum=0.0)
  except TypeError as e:
    raise ValueError(
      f'{type(model).__name__} has no bn_momentum attribute; '
      'recompute_batch_stats needs one passed to its nn.BatchNorm layers'
    ) from e
  kwargs = tuple(sorted((train_kwargs or {}).items()))

  total, num_batches = None, 0
  for batch in batches:
    images = batch['image']
    if total is None:
      shapes = jax.eval_shape(
        functools.partial(_batch_statistics, probe, kwargs), params, images
      )
      total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total = _add_batch_statistics(probe, kwargs, params, images, total)
    num_batches += 1
  if not num_batches:
    raise ValueError('recompute_batch_stats needs at least one batch')
  return jax.tree.map(lambda s: s / num_batches, total)


# The optax wrapper.


class WithAveragesState(NamedTuple):
  """State of `with_averages`: the inner optimizer's and each average's.

  Each average's state carries its own `count` of updates.
  """

  inner_state: optax.OptState
  averages: dict[str, AveragerState]


def with_averages(
  inner: optax.GradientTransformation, averagers: Mapping[str, Averager]
) -> optax.GradientTransformationExtraArgs:
  """Wraps an optimizer so that its state also carries iterate averages.

  `update(g, state, params)` computes the inner updates u and averages

      theta_t = params + u   (as optax.apply_updates, in params' dtype),

  the parameters after the update. So `with_averages` must see the final
  updates: wrap the whole optimizer, or put it last in a chain. Read the
  averages with `averages_from(opt_state)`.

  Args:
    inner: the optimizer.
    averagers: name -> `Averager`.

  Returns:
    An optax transformation whose state is a `WithAveragesState`; its
    `update` requires `params` and passes extra arguments to `inner`.
  """
  inner = optax.with_extra_args_support(inner)
  averagers = dict(averagers)
  for name, averager in averagers.items():
    if not isinstance(averager, Averager):
      raise TypeError(
        f'averagers[{name!r}] is a {type(averager).__name__}, not an Averager'
      )

  def init(params: optax.Params) -> WithAveragesState:
    return WithAveragesState(
      inner_state=inner.init(params),
      averages={name: a.init(params) for name, a in averagers.items()},
    )

  def update(
    updates: optax.Updates,
    state: WithAveragesState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, WithAveragesState]:
    if params is None:
      raise ValueError('with_averages: update needs params')
    updates, inner_state = inner.update(
      updates, state.inner_state, params, **extra_args
    )
    theta = optax.apply_updates(params, updates)
    averages = {
      name: a.update(theta, state.averages[name])
      for name, a in averagers.items()
    }
    return updates, WithAveragesState(inner_state, averages)

  return optax.GradientTransformationExtraArgs(init, update)


def averages_from(
  opt_state: optax.OptState,
) -> dict[str, tuple[PyTree, jax.Array]]:
  """The named averages in an optimizer state built with `with_averages`.

  The `WithAveragesState` is found by type anywhere in the state (a chain,
  nested wrappers), never by position.

  Args:
    opt_state: the optimizer state.

  Returns:
    name -> (average, valid), as each averager's `result` gives them.

  Raises:
    ValueError: no `WithAveragesState`, or more than one.
  """
  found = [
    x
    for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, WithAveragesState)
    )
    if isinstance(x, WithAveragesState)
  ]
  if len(found) != 1:
    raise ValueError(
      f'expected one with_averages state in the optimizer state, '
      f'found {len(found)}'
    )
  return {name: average_of(s) for name, s in found[0].averages.items()}


# Config: the `config.averaging` block.


class AveragedModel(NamedTuple):
  """An averaged model the trainer tracks and evaluates.

  Attributes:
    averager: its averaging rule.
    bn_mode: where its BatchNorm statistics come from: 'average' (averaged
      with the weights), 'recompute' (`recompute_batch_stats`) or 'live'
      (the raw model's current statistics).
  """

  averager: Averager
  bn_mode: str


def default_config() -> ml_collections.ConfigDict:
  """The `config.averaging` block, with every averaged model off.

  Returns:
    A ConfigDict with fields
      ema_decays (tuple of floats; one EMA each), ema_start, ema_period,
      ema_warmup, ema_debias, ema_bn;
      swa (bool), swa_start, swa_period, swa_bn;
      lawa_snapshots (m; 0 = off), lawa_period (c), lawa_bn;
      two_point_gaps (tuple of ints; one two-point average each),
      two_point_bn;
      multi_point_count (m; 0 = off), multi_point_gap (k), multi_point_bn;
      recompute_batches (N for 'recompute'), memory_budget_mb (MiB for all
      averaged states together).
  """
  return ml_collections.ConfigDict(
    {
      'ema_decays': (),
      'ema_start': 0,
      'ema_period': 1,
      'ema_warmup': False,
      'ema_debias': False,
      'ema_bn': 'average',
      'swa': False,
      'swa_start': 0,
      'swa_period': 1,
      'swa_bn': 'average',
      'lawa_snapshots': 0,
      'lawa_period': 1,
      'lawa_bn': 'average',
      'two_point_gaps': (),
      'two_point_bn': 'average',
      'multi_point_count': 0,
      'multi_point_gap': 1,
      'multi_point_bn': 'average',
      'recompute_batches': 8,
      'memory_budget_mb': 4096.0,
    }
  )


def _is_int(x: Any) -> bool:
  return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
  return _is_int(x) or isinstance(x, float | np.floating)


def _int_field(cfg, name: str, minimum: int) -> int:
  value = cfg[name]
  if not _is_int(value) or value < minimum:
    raise ConfigError(
      f'averaging.{name}', f'must be an int >= {minimum}, got {value!r}'
    )
  return int(value)


def _start_field(cfg, name: str, num_steps: int) -> None:
  start = _int_field(cfg, name, 0)
  if start > num_steps:
    raise ConfigError(
      f'averaging.{name}',
      f'start step {start} is past the end of training; allowed: 0 to '
      f'num_steps ({num_steps})',
    )


def _bool_field(cfg, name: str) -> bool:
  if not isinstance(cfg[name], bool | np.bool_):
    raise ConfigError(f'averaging.{name}', f'must be a bool, got {cfg[name]!r}')
  return bool(cfg[name])


def _tuple_field(cfg, name: str, is_item: Callable, what: str) -> tuple:
  value = cfg[name]
  if not isinstance(value, Sequence) or isinstance(value, str):
    raise ConfigError(
      f'averaging.{name}', f'must be a tuple of {what}, got {value!r}'
    )
  bad = [x for x in value if not is_item(x)]
  if bad:
    raise ConfigError(f'averaging.{name}', f'{bad[0]!r} is not one of {what}')
  if len(set(value)) != len(value):
    raise ConfigError(f'averaging.{name}', f'has repeats: {tuple(value)}')
  return tuple(value)


def _check_gap(
  field: str, span: int, num_steps: int, eval_steps: Sequence[int]
) -> None:
  """Errors unless some evaluation step t >= span = (m - 1) k can be read."""
  if span > num_steps:
    raise ConfigError(
      field,
      f'the averaged iterates span {span} steps, more than the whole run; '
      f'allowed: a span of at most num_steps ({num_steps})',
    )
  if not any(e >= span for e in eval_steps):
    raise ConfigError(
      field,
      f'every evaluation step is before step {span}, so this average would '
      f'never be evaluated; allowed: a span of at most {max(eval_steps)} (the '
      'last evaluation step)',
    )


def validate(
  cfg: ml_collections.ConfigDict,
  *,
  num_steps: int,
  eval_steps: Iterable[int],
) -> None:
  """Checks the `config.averaging` block before anything compiles.

  Args:
    cfg: the block (`config.averaging`).
    num_steps: optimizer steps in the run.
    eval_steps: steps at which models are evaluated.

  Raises:
    ConfigError: naming the first bad field: an unknown or missing field, a
      decay outside [0, 1), a non-positive gap, period or count, a start step
      past the end of training, an unknown BatchNorm mode, a gap larger than
      the run, or a gap whose evaluation steps all come before it.
  """
  eval_steps = [int(e) for e in eval_steps]
  known = default_config()
  for name in cfg.keys():
    if name not in known:
      raise ConfigError(
        f'averaging.{name}',
        f'unknown field; known fields: {", ".join(known.keys())}',
      )
  for name in known.keys():
    if name not in cfg:
      raise ConfigError(f'averaging.{name}', 'missing field')

  for name in ('ema_bn', 'swa_bn', 'lawa_bn', 'two_point_bn', 'multi_point_bn'):
    if cfg[name] not in BN_MODES:
      raise ConfigError(
        f'averaging.{name}',
        f'unknown BatchNorm mode {cfg[name]!r}; allowed: '
        + ', '.join(repr(m) for m in BN_MODES),
      )

  decays = _tuple_field(cfg, 'ema_decays', _is_number, 'floats')
  for d in decays:
    if not 0.0 <= d < 1.0:
      raise ConfigError('averaging.ema_decays', f'decay {d} is not in [0, 1)')
  _int_field(cfg, 'ema_period', 1)
  _bool_field(cfg, 'ema_warmup')
  _bool_field(cfg, 'ema_debias')
  if decays:
    _start_field(cfg, 'ema_start', num_steps)
  else:
    _int_field(cfg, 'ema_start', 0)

  _int_field(cfg, 'swa_period', 1)
  if _bool_field(cfg, 'swa'):
    _start_field(cfg, 'swa_start', num_steps)
  else:
    _int_field(cfg, 'swa_start', 0)

  _int_field(cfg, 'lawa_snapshots', 0)
  _int_field(cfg, 'lawa_period', 1)

  gaps = _tuple_field(cfg, 'two_point_gaps', _is_int, 'ints')
  for k in gaps:
    if k < 1:
      raise ConfigError('averaging.two_point_gaps', f'gap {k} is not >= 1')
    _check_gap('averaging.two_point_gaps', k, num_steps, eval_steps)

  count = _int_field(cfg, 'multi_point_count', 0)
  if count == 1:
    raise ConfigError(
      'averaging.multi_point_count', 'must be 0 (off) or >= 2, got 1'
    )
  gap = _int_field(cfg, 'multi_point_gap', 1)
  if count:
    _check_gap(
      'averaging.multi_point_gap', (count - 1) * gap, num_steps, eval_steps
    )

  _int_field(cfg, 'recompute_batches', 1)
  budget = cfg.memory_budget_mb
  if not _is_number(budget) or budget <= 0:
    raise ConfigError(
      'averaging.memory_budget_mb', f'must be a number > 0, got {budget!r}'
    )


def build_averagers(
  cfg: ml_collections.ConfigDict,
  *,
  num_steps: int,
  eval_steps: Iterable[int],
  first_step: int = 0,
) -> dict[str, AveragedModel]:
  """The averaged models a `config.averaging` block asks for, by name.

  Names: `ema_<decay>` (e.g. `ema_0.999`), `swa`, `lawa_<m>x<c>`,
  `two_point_k<k>`, `multi_point_<m>x<k>`. Validates `cfg` first.

  Averagers count the updates they see, so a run branched at global step
  `first_step` gets averagers whose start and evaluation steps are shifted
  by it: they begin with the branch point's weights.

  Args:
    cfg: the block (`config.averaging`).
    num_steps: the global step the run trains to.
    eval_steps: global steps at which models are evaluated.
    first_step: the global step at which the averagers are initialised.

  Returns:
    name -> `AveragedModel`, in the order above; empty when all are off.
  """
  eval_steps = [int(e) for e in eval_steps]
  validate(cfg, num_steps=num_steps, eval_steps=eval_steps)
  eval_steps = [e - first_step for e in eval_steps if e > first_step]
  shift = lambda start: max(0, start - first_step)
  models = {}
  for decay in cfg.ema_decays:
    models[f'ema_{float(decay)!r}'] = AveragedModel(
      ema(
        float(decay),
        start_step=shift(cfg.ema_start),
        period=cfg.ema_period,
        warmup=cfg.ema_warmup,
        debias=cfg.ema_debias,
      ),
      cfg.ema_bn,
    )
  if cfg.swa:
    models['swa'] = AveragedModel(
      swa(start_step=shift(cfg.swa_start), period=cfg.swa_period),
      cfg.swa_bn,
    )
  if cfg.lawa_snapshots:
    m, c = cfg.lawa_snapshots, cfg.lawa_period
    models[f'lawa_{m}x{c}'] = AveragedModel(lawa(m, period=c), cfg.lawa_bn)
  for k in cfg.two_point_gaps:
    models[f'two_point_k{k}'] = AveragedModel(
      two_point(k, eval_steps), cfg.two_point_bn
    )
  if cfg.multi_point_count:
    m, k = cfg.multi_point_count, cfg.multi_point_gap
    models[f'multi_point_{m}x{k}'] = AveragedModel(
      multi_point(k, m, eval_steps), cfg.multi_point_bn
    )
  return models


def variables_to_average(
  variables: Mapping[str, PyTree], bn_mode: str
) -> dict[str, PyTree]:
  """The part of a model's variables an averaged model tracks.

  Args:
    variables: {'params': ..., 'batch_stats': ...} (batch_stats optional).
    bn_mode: one of BN_MODES.

  Returns:
    All collections in 'average' mode, else only {'params': ...}.
  """
  if bn_mode not in BN_MODES:
    raise ValueError(f'unknown BatchNorm mode {bn_mode!r}')
  if bn_mode == 'average':
    return dict(variables)
  return {'params': variables['params']}


def check_memory(
  models: Mapping[str, AveragedModel],
  variables: Mapping[str, PyTree],
  budget_mb: float,
) -> int:
  """Checks that the averaged models' states fit in the memory budget.

  Args:
    models: name -> `AveragedModel`.
    variables: the model's variables (arrays or shapes), as
      `variables_to_average` takes them.
    budget_mb: budget in MiB (2^20 bytes) for all states together.

  Returns:
    The bytes needed.

  Raises:
    ConfigError: on 'averaging.memory_budget_mb', stating needed vs budget.
  """
  sizes = {
    name: state_bytes(m.averager, variables_to_average(variables, m.bn_mode))
    for name, m in models.items()
  }
  needed = sum(sizes.values())
  if needed > budget_mb * 2**20:
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])
    detail = ', '.join(f'{n}: {b / 2**20:.1f}' for n, b in largest)
    raise ConfigError(
      'averaging.memory_budget_mb',
      f'averaged models need {needed / 2**20:.1f} MiB ({detail}) but the '
      f'budget is {budget_mb:.1f} MiB',
    )
  return needed
