"""The train state and the pure, module-level train and eval steps.

`train_step` and `eval_step` are plain functions of arrays; `trainer.py` binds
their static arguments (model, optimizer, averagers) with `functools.partial`
and jits them once, with the state donated and the batch sharded over the
`data` axis of a device mesh. Parameters are replicated, so XLA computes
BatchNorm statistics over the global batch (the partitioner inserts the
all-reduce); `ghost_batch_size` splits each device's rows into groups with
statistics of their own instead.
"""

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from sgd_quad import averaging

PyTree = Any
Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step.

  Attributes:
    step: number of updates applied so far; int32 scalar.
    params: the model's `params` collection (float32).
    batch_stats: the BatchNorm running statistics (float32).
    opt_state: the optax optimizer state.
    averages: averager name -> that averager's state; each averages either
      `params` or `{'params', 'batch_stats'}` (BatchNorm mode `average`).
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  averages: dict[str, PyTree]


def cross_entropy(
  logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy with optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(
    jax.nn.one_hot(labels, num_classes), label_smoothing
  )
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _apply_train(model, params, batch_stats, images, ghost_batch_size):
  """Training-mode forward pass; returns logits and new running statistics.

  With ghost batches the rows are split into groups of `ghost_batch_size`
  that each normalise with their own statistics. The running statistics then
  move towards the mean of the groups' statistics, which equals averaging the
  groups' individual running-statistic updates.
  """
  variables = {'params': params, 'batch_stats': batch_stats}
  if not ghost_batch_size:
    logits, updates = model.apply(
      variables, images, train=True, mutable=['batch_stats']
    )
    return logits, updates['batch_stats']

  groups = images.reshape(-1, ghost_batch_size, *images.shape[1:])

  def one_group(x):
    return model.apply(variables, x, train=True, mutable=['batch_stats'])

  logits, updates = jax.vmap(one_group)(groups)
  new_stats = jax.tree.map(lambda s: s.mean(0), updates['batch_stats'])
  return logits.reshape(-1, logits.shape[-1]), new_stats


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  averagers: Mapping[str, averaging.AveragedModel],
  label_smoothing: float,
  ghost_batch_size: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD update on `batch`, followed by every averager's update.

  Args:
    state: the state after `state.step` updates.
    batch: {'image': [B, H, W, C], 'label': [B]}, sharded over devices.
    model: the Linen model.
    tx: the optimizer.
    schedule: the learning-rate schedule (only for logging).
    averagers: name -> averaged model definition.
    label_smoothing: smoothing of the training targets.
    ghost_batch_size: rows per BatchNorm group, 0 for the global batch.

  Returns:
    The new state and scalar metrics of this step (kept on device).
  """

  def loss_fn(params):
    logits, new_stats = _apply_train(
      model, params, state.batch_stats, batch['image'], ghost_batch_size
    )
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, new_stats)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, batch_stats)), grads = grad_fn(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  averages = {
    name: avg.averager.update(
      averaging.variables_to_average(
        {'params': params, 'batch_stats': batch_stats}, avg.bn_mode
      ),
      state.averages[name],
    )
    for name, avg in averagers.items()
  }
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    averages=averages,
  )
  metrics = {
    'loss': loss,
    'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
    'learning_rate': jnp.asarray(schedule(state.step), jnp.float32),
    'grad_norm': optax.tree.norm(grads),
    'update_norm': optax.tree.norm(updates),
    'param_norm': optax.tree.norm(params),
  }
  return new_state, metrics


def update_direction(
  state: TrainState,
  batch: Batch,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  label_smoothing: float,
  ghost_batch_size: int,
) -> PyTree:
  """The direction d of the optimizer's next step: theta_{t+1} = theta - lr d.

  That is the update the train step would apply on `batch` (momentum and
  weight decay included), divided by -lr, so that a probe along d with step
  size eta = lr lands exactly on the next iterate.
  """

  def loss_fn(params):
    logits, _ = _apply_train(
      model, params, state.batch_stats, batch['image'], ghost_batch_size
    )
    return cross_entropy(logits, batch['label'], label_smoothing).mean()

  grads = jax.grad(loss_fn)(state.params)
  updates, _ = tx.update(grads, state.opt_state, state.params)
  lr = schedule(state.step)
  return jax.tree.map(lambda u: -u / lr, updates)


def eval_step(
  variables: Mapping[str, PyTree], batch: Batch, *, model: nn.Module
) -> dict[str, dict[str, jax.Array]]:
  """Scores several models on one evaluation batch in one compiled call.

  The models are looped over in Python (unrolled in the compiled function)
  rather than vmapped: vmapping over weights turns convolutions into grouped
  convolutions, which are several times slower on some backends.

  Args:
    variables: model name -> {'params', 'batch_stats'}.
    batch: {'image', 'label', 'mask'}; padded rows have mask 0.

  Returns:
    name -> {'loss_sum', 'correct_sum', 'count'} over the real rows.
  """
  mask = batch['mask'].astype(jnp.float32)
  sums = {}
  for name, tree in variables.items():
    logits = model.apply(tree, batch['image'], train=False)
    losses = cross_entropy(logits, batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
    sums[name] = {
      'loss_sum': jnp.sum(losses * mask),
      'correct_sum': jnp.sum(correct * mask),
      'count': jnp.sum(mask),
    }
  return sums


def nonfinite_parts(state: TrainState) -> dict[str, jax.Array]:
  """Which parts of the state hold a NaN or an infinity.

  The loop checks losses and norms every step; this covers what they miss
  (BatchNorm statistics, momentum, the averages) before a checkpoint.

  Args:
    state: the train state.

  Returns:
    part name -> a bool scalar, True when some entry of that part is not
    finite; parts are `params`, `batch_stats`, `opt_state` and
    `averages/<name>`.
  """

  def bad(tree):
    checks = [
      ~jnp.all(jnp.isfinite(x))
      for x in jax.tree.leaves(tree)
      if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.any(jnp.stack(checks)) if checks else jnp.bool_(False)

  parts = {
    'params': state.params,
    'batch_stats': state.batch_stats,
    'opt_state': state.opt_state,
  }
  parts.update({f'averages/{k}': v for k, v in state.averages.items()})
  return {name: bad(tree) for name, tree in parts.items()}


def model_variables(
  state: TrainState,
  *,
  averagers: Mapping[str, averaging.AveragedModel],
) -> tuple[dict[str, PyTree], dict[str, jax.Array]]:
  """The variables of the raw model and of every averaged model.

  Averaged models in BatchNorm mode `average` carry their averaged
  statistics; `live` and `recompute` ones get the raw model's statistics
  here (the trainer replaces them for `recompute`).

  Args:
    state: the train state.
    averagers: name -> averaged model definition.

  Returns:
    name -> {'params', 'batch_stats'} ('raw' first), and name -> a bool
    scalar that says whether that model is defined at this step.
  """
  raw = {'params': state.params, 'batch_stats': state.batch_stats}
  variables, valid = {'raw': raw}, {'raw': jnp.bool_(True)}
  for name, avg in averagers.items():
    tree, valid[name] = avg.averager.result(state.averages[name])
    stats = tree.get('batch_stats', state.batch_stats)
    variables[name] = {'params': tree['params'], 'batch_stats': stats}
  return variables, valid
