"""Loss functions that the probes evaluate, built from a Linen model.

Every probe works on a function `loss_fn(params, batch) -> scalar`. This module
builds that function from a Linen model and its BatchNorm statistics: the data
loss (masked mean softmax cross-entropy, no label smoothing, no L2) or, when
asked, the training objective (label smoothing and a coupled L2 term). The
BatchNorm mode decides whether normalisation uses the statistics of the batch
being evaluated ('batch', the model in training mode) or the stored running
statistics ('running'). Probes never change the model: updated statistics from a
training-mode call are discarded.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
Batch = Mapping[str, jax.Array]
LossFn = Callable[[PyTree, Any], jax.Array]

# Index of a mode in BN_MODES is what the info records store (-1: unknown).
BN_MODES = ('batch', 'running')
OBJECTIVES = ('data', 'train')


def check_choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
  """Raises ValueError naming `field` unless `value` is one of `allowed`."""
  if value not in allowed:
    raise ValueError(f'{field}: {value!r} is not one of {tuple(allowed)}')


def bn_mode_code(bn_mode: str) -> int:
  """Returns the integer code of a BatchNorm mode (its index in BN_MODES).

  Args:
    bn_mode: 'batch' or 'running'.

  Returns:
    0 for 'batch', 1 for 'running'.
  """
  check_choice('bn_mode', bn_mode, BN_MODES)
  return BN_MODES.index(bn_mode)


def cross_entropy(
  logits: jax.Array,
  labels: jax.Array,
  mask: jax.Array | None = None,
  label_smoothing: float | jax.Array = 0.0,
  smooth: bool = False,
) -> jax.Array:
  """Masked mean softmax cross-entropy.

  loss = sum_i m_i ce_i / max(sum_i m_i, 1), with ce_i the cross-entropy of
  example i against its label (smoothed to (1 - s) onehot + s / C when `smooth`
  is set) and m_i the mask (all ones when absent).

  Args:
    logits: float [B, C].
    labels: int [B].
    mask: optional float [B], 1 for real examples and 0 for padding.
    label_smoothing: s, used only when `smooth` is True.
    smooth: whether to apply label smoothing (a static switch, so that the data
      loss uses the exact integer-label form).

  Returns:
    Scalar loss.
  """
  if smooth:
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    targets = optax.smooth_labels(onehot, label_smoothing)
    per_example = optax.softmax_cross_entropy(logits, targets)
  else:
    per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    )
  if mask is None:
    return jnp.mean(per_example)
  mask = mask.astype(per_example.dtype)
  return jnp.sum(mask * per_example) / jnp.maximum(jnp.sum(mask), 1.0)


def l2_penalty(params: PyTree) -> jax.Array:
  """Returns 0.5 * |params|^2 summed over every leaf."""
  leaves = jax.tree.leaves(params)
  return 0.5 * sum(jnp.sum(jnp.square(x)) for x in leaves)


def make_loss_fn(
  model: nn.Module,
  batch_stats: PyTree,
  *,
  bn_mode: str = 'batch',
  objective: str = 'data',
  label_smoothing: float | jax.Array = 0.0,
  weight_decay: float | jax.Array = 0.0,
) -> LossFn:
  """Builds `loss_fn(params, batch)` for a Linen classifier.

  data:  L(theta; B) = masked mean CE(model(theta, x), y)
  train: L(theta; B) = masked mean CE with label smoothing
                       + 0.5 * weight_decay * |theta|^2

  Args:
    model: Linen module called as `model.apply(variables, images, train=...)`.
    batch_stats: BatchNorm statistics (None or {} for models without them).
    bn_mode: 'batch' normalises with the statistics of the evaluated batch
      (training mode, updated statistics discarded); 'running' uses
      `batch_stats`.
    objective: 'data' (plain cross-entropy) or 'train' (with label smoothing
      and the coupled L2 term).
    label_smoothing: used by the 'train' objective only.
    weight_decay: used by the 'train' objective only.

  Returns:
    A pure function of (params, batch) returning a scalar loss; batch is a dict
    with 'image', 'label' and optionally 'mask'.
  """
  check_choice('bn_mode', bn_mode, BN_MODES)
  check_choice('objective', objective, OBJECTIVES)
  train_mode = bn_mode == 'batch'
  is_train_objective = objective == 'train'

  def loss_fn(params: PyTree, batch: Batch) -> jax.Array:
    variables = {'params': params}
    if batch_stats:
      variables['batch_stats'] = batch_stats
    if train_mode:
      logits, _ = model.apply(
        variables, batch['image'], train=True, mutable=['batch_stats']
      )
    else:
      logits = model.apply(variables, batch['image'], train=False)
    loss = cross_entropy(
      logits,
      batch['label'],
      batch.get('mask'),
      label_smoothing,
      smooth=is_train_objective,
    )
    if is_train_objective:
      loss = loss + weight_decay * l2_penalty(params)
    return loss

  return loss_fn


def batch_losses(
  model: nn.Module,
  params: PyTree,
  batch_stats: PyTree,
  batches: Sequence[Batch],
  *,
  bn_mode: str = 'batch',
) -> jax.Array:
  """Data loss of each batch at `params` (the loss along the trajectory).

  Args:
    model: Linen module.
    params: model parameters.
    batch_stats: BatchNorm statistics.
    batches: sequence of batch dicts (shapes may differ between batches).
    bn_mode: 'batch' or 'running'.

  Returns:
    float [len(batches)].
  """
  check_choice('bn_mode', bn_mode, BN_MODES)
  return _batch_losses_jit(model, params, batch_stats, tuple(batches), bn_mode)


def _batch_losses(model, params, batch_stats, batches, bn_mode):
  loss_fn = make_loss_fn(model, batch_stats, bn_mode=bn_mode)
  return jnp.stack([loss_fn(params, b) for b in batches])


_batch_losses_jit = jax.jit(_batch_losses, static_argnums=(0, 4))
