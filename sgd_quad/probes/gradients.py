"""Gradient statistics of mini-batches: alignment and gradient noise.

Under the noisy-quadratic model a mini-batch gradient is the full-batch gradient
plus noise, and at a constant learning rate the two are nearly orthogonal
(cos^2 ~ alpha / 2). This module measures that: per-batch gradients g_i of M
batches, their mean (a large-batch gradient), the cosine of each g_i and of a
given direction with the mean, and the trace of the gradient covariance
(1 / (M - 1)) sum_i |g_i - mean g|^2. Gradients are trees; `cosine` and
`tree_vdot` work on any pair of trees of the same structure.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgd_quad.probes import losses as losses_lib

PyTree = Any


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """Inner product sum_leaves sum(a * b) of two trees of the same structure."""

  def leaf_dot(x, y):
    # Accumulate low-precision leaves in at least float32.
    dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
    return jnp.vdot(x.astype(dtype), y.astype(dtype))

  dots = jax.tree.map(leaf_dot, a, b)
  return sum(jax.tree.leaves(dots), jnp.zeros((), jnp.float32))


def tree_norm(a: PyTree) -> jax.Array:
  """Euclidean norm of a tree, sqrt(sum_leaves sum(a^2))."""
  return jnp.sqrt(tree_vdot(a, a))


def cosine(a: PyTree, b: PyTree) -> jax.Array:
  """Cosine of the angle between two trees.

  cos(a, b) = <a, b> / (|a| |b|); NaN when either tree is zero.

  Args:
    a: tree of arrays.
    b: tree of the same structure.

  Returns:
    Scalar cosine.
  """
  denom = tree_norm(a) * tree_norm(b)
  safe = jnp.where(denom > 0, denom, 1.0)
  return jnp.where(denom > 0, tree_vdot(a, b) / safe, jnp.nan)


class GradientStats(NamedTuple):
  """Statistics of M per-batch gradients g_1..g_M.

  Attributes:
    mean_grad: tree, mean g = (1/M) sum_i g_i (a large-batch gradient).
    mean_grad_norm: float [], |mean g|.
    grad_norms: float [M], |g_i|.
    cos_to_mean: float [M], cos(g_i, mean g).
    noise_trace: float [], (1/(M-1)) sum_i |g_i - mean g|^2, the trace of the
      covariance of a single batch gradient.
    direction_cos: float [], cos(d, mean g) for the given direction d (the
      direction batch's gradient); NaN when none was given.
    direction_norm: float [], |d|; NaN when none was given.
    bn_mode: int32 [], index into BN_MODES of the BatchNorm mode; -1 when the
      loss function came without one.
  """

  mean_grad: PyTree
  mean_grad_norm: jax.Array
  grad_norms: jax.Array
  cos_to_mean: jax.Array
  noise_trace: jax.Array
  direction_cos: jax.Array
  direction_norm: jax.Array
  bn_mode: jax.Array


def stack_batches(batches: Sequence[PyTree] | PyTree) -> PyTree:
  """Stacks a sequence of same-shaped batches along a new leading axis.

  A dict (already stacked) is returned as is.
  """
  if isinstance(batches, Sequence):
    if not batches:
      raise ValueError('batches: needs at least 2 batches, got none')
    return jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
  return batches


def gradient_statistics_fn(
  loss_fn: losses_lib.LossFn,
  params: PyTree,
  batches: Sequence[PyTree] | PyTree,
  *,
  direction: PyTree | None = None,
) -> GradientStats:
  """Gradient statistics of `loss_fn` over M batches.

  g_i = grad_theta loss_fn(theta, B_i), mean g = (1/M) sum_i g_i,
  noise_trace = (1/(M-1)) sum_i |g_i - mean g|^2.

  The M gradients are computed one after the other (lax.map) and held in memory
  together (M times the parameter size), so the deviations are summed exactly
  rather than through |g_i|^2 - |mean g|^2, which cancels.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar`.
    params: parameters theta.
    batches: a sequence of M >= 2 same-shaped batches, or one batch tree whose
      leaves carry a leading axis of size M.
    direction: optional tree d (for example the gradient of the direction
      batch) to compare with the mean gradient.

  Returns:
    GradientStats, with bn_mode -1.
  """
  stacked = stack_batches(batches)
  num = jax.tree.leaves(stacked)[0].shape[0]
  if num < 2:
    raise ValueError(f'batches: needs at least 2 batches, got {num}')

  grads = jax.lax.map(lambda b: jax.grad(loss_fn)(params, b), stacked)
  mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)

  def per_batch(fn):
    # Sums fn(leaf) over all axes but the leading (batch) one, over leaves.
    parts = jax.tree.map(
      lambda g, m: jnp.sum(fn(g, m).reshape(num, -1), axis=1), grads, mean
    )
    return sum(jax.tree.leaves(parts), jnp.zeros((num,), jnp.float32))

  sq_norms = per_batch(lambda g, m: jnp.square(g))
  dots = per_batch(lambda g, m: g * m)
  deviations = per_batch(lambda g, m: jnp.square(g - m))
  mean_norm = tree_norm(mean)
  grad_norms = jnp.sqrt(sq_norms)
  denom = grad_norms * mean_norm
  cos_to_mean = jnp.where(
    denom > 0, dots / jnp.where(denom > 0, denom, 1.0), jnp.nan
  )

  if direction is None:
    direction_cos = jnp.full((), jnp.nan, jnp.float32)
    direction_norm = jnp.full((), jnp.nan, jnp.float32)
  else:
    direction_cos = cosine(direction, mean)
    direction_norm = tree_norm(direction)

  return GradientStats(
    mean_grad=mean,
    mean_grad_norm=mean_norm,
    grad_norms=grad_norms,
    cos_to_mean=cos_to_mean,
    noise_trace=jnp.sum(deviations) / (num - 1),
    direction_cos=direction_cos,
    direction_norm=direction_norm,
    bn_mode=jnp.asarray(-1, jnp.int32),
  )


def gradient_statistics(
  model: nn.Module,
  params: PyTree,
  batch_stats: PyTree,
  batches: Sequence[losses_lib.Batch] | losses_lib.Batch,
  *,
  bn_mode: str = 'batch',
  direction_batch: losses_lib.Batch | None = None,
  direction: PyTree | None = None,
  objective: str = 'data',
  label_smoothing: float = 0.0,
  weight_decay: float = 0.0,
) -> GradientStats:
  """Gradient statistics of a Linen classifier over M batches (E5).

  See `gradient_statistics_fn` for the formulas. The loss is the data loss
  unless `objective='train'`.

  Args:
    model: Linen module.
    params: model parameters.
    batch_stats: BatchNorm statistics.
    batches: M >= 2 same-shaped batches (a sequence, or stacked with a leading
      axis M).
    bn_mode: 'batch' or 'running' (see `losses.make_loss_fn`).
    direction_batch: optional batch whose gradient is compared with the mean.
    direction: optional tree compared with the mean instead (for example the
      gradient the training step already computed); not both.
    objective: 'data' or 'train'.
    label_smoothing: for the 'train' objective.
    weight_decay: for the 'train' objective.

  Returns:
    GradientStats with bn_mode recorded.
  """
  code = losses_lib.bn_mode_code(bn_mode)
  losses_lib.check_choice('objective', objective, losses_lib.OBJECTIVES)
  if direction_batch is not None and direction is not None:
    raise ValueError('direction: give direction or direction_batch, not both')
  stats = _gradient_statistics_jit(
    model,
    params,
    batch_stats,
    stack_batches(batches),
    direction_batch,
    direction,
    jnp.asarray(label_smoothing),
    jnp.asarray(weight_decay),
    bn_mode,
    objective,
  )
  return stats._replace(bn_mode=jnp.asarray(code, jnp.int32))


def _gradient_statistics(
  model,
  params,
  batch_stats,
  batches,
  direction_batch,
  direction,
  label_smoothing,
  weight_decay,
  bn_mode,
  objective,
):
  loss_fn = losses_lib.make_loss_fn(
    model,
    batch_stats,
    bn_mode=bn_mode,
    objective=objective,
    label_smoothing=label_smoothing,
    weight_decay=weight_decay,
  )
  if direction_batch is not None:
    direction = jax.grad(loss_fn)(params, direction_batch)
  return gradient_statistics_fn(loss_fn, params, batches, direction=direction)


_gradient_statistics_jit = jax.jit(
  _gradient_statistics, static_argnums=(0, 8, 9)
)
