"""One-step line search along a mini-batch gradient (experiments E1 and E2).

Given parameters theta, a direction batch B and evaluation batches B', the
probe computes the gradient g = grad L_B(theta) once and evaluates

    f_j(eta) = L_j(theta - eta g)      for every step size eta in a grid,

for j = B and every B'. Under the noisy-quadratic model f_B is exactly the
parabola L_B - eta |g|^2 + 0.5 eta^2 g^T H_B g, so alongside the curves the
probe returns its exact slope -g . grad L_B and curvature g^T H_B g (a
Hessian-vector product), to compare with the least-squares fit of
`sgd_quad.probes.fit`.

The K step sizes are evaluated with one of three strategies: 'vmap' (all at
once; vmapping over weights turns convolutions into grouped convolutions, which
can be much slower than plain ones), 'chunked' (`lax.map` over chunks of
`chunk_size` vmapped step sizes, bounded memory) and 'sequential' (one step size
per loop iteration). 'auto' picks the measured default of the current backend
(DEFAULT_STRATEGIES; `sgd_quad.benchmarks.probe_strategies` measures it).
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgd_quad.probes import gradients
from sgd_quad.probes import losses as losses_lib

PyTree = Any

STRATEGIES = ('vmap', 'chunked', 'sequential')

# Measured with `python -m sgd_quad.benchmarks.probe_strategies` (K = 32,
# resnet_digits, batch 128, 2 shared CPU cores), median time relative to 32
# plain forward passes: sequential 0.92x, chunked(2, 4) 2.0-2.1x,
# chunked(8, 16) 3.7-4.2x, full vmap 5.3x.
# TODO(sgd_quad): measure on GPU and TPU (no accelerator was available); until
# then they use a guess, chunks of 8 vmapped step sizes.
DEFAULT_STRATEGIES = {
  'cpu': ('sequential', 1),
  'gpu': ('chunked', 8),
  'tpu': ('chunked', 8),
}


class LineSearchInfo(NamedTuple):
  """Losses along theta - eta d for a grid of eta, with exact derivatives.

  Row 0 of every per-batch array is the direction batch B; rows 1.. are the
  evaluation batches in the order given.

  Attributes:
    etas: float [K], the step sizes.
    losses: float [1 + n_eval, K], L_j(theta - eta_k d).
    loss_at_zero: float [1 + n_eval], L_j(theta).
    slope: float [], d/deta L_B(theta - eta d) at eta = 0, -d . grad L_B
      (= -|g|^2 for the plain gradient).
    curvature: float [], d^2/deta^2 L_B at eta = 0, d^T H_B d.
    calculus_argmin: float [], -slope / curvature, the minimiser of the Taylor
      parabola of B's curve (|g|^2 / g^T H_B g for the plain gradient); NaN
      when the curvature is not positive.
    calculus_min: float [], L_B - slope^2 / (2 curvature), its minimum; NaN
      when the curvature is not positive.
    grad_norm: float [], |grad L_B(theta)|.
    direction_norm: float [], |d| (equal to grad_norm for the plain gradient).
    plain_gradient: bool [], True when d = grad L_B, False when the caller
      passed its own direction (for example the optimizer's update).
    bn_mode: int32 [], index into losses.BN_MODES ('batch': batch statistics,
      'running': running statistics); -1 when the loss function came without
      a mode.
  """

  etas: jax.Array
  losses: jax.Array
  loss_at_zero: jax.Array
  slope: jax.Array
  curvature: jax.Array
  calculus_argmin: jax.Array
  calculus_min: jax.Array
  grad_norm: jax.Array
  direction_norm: jax.Array
  plain_gradient: jax.Array
  bn_mode: jax.Array


def validate_etas(etas: Any) -> Any:
  """Checks a step-size grid; returns it as a numpy array when concrete.

  The grid must be one-dimensional, non-empty, finite, >= 0 and sorted
  strictly increasing. A traced grid (inside the caller's jit) is checked for
  its shape only and returned unchanged.

  Args:
    etas: sequence or array of step sizes.

  Returns:
    The grid (numpy float64 when concrete).

  Raises:
    ValueError: naming 'etas', when the grid breaks a rule.
  """
  try:
    arr = np.asarray(etas, dtype=np.float64)
  except jax.errors.TracerArrayConversionError:
    if etas.ndim != 1 or etas.shape[0] == 0:
      raise ValueError(
        f'etas: must be a non-empty 1-D grid, got shape {etas.shape}'
      ) from None
    return etas
  except (TypeError, ValueError) as e:
    raise ValueError(f'etas: not an array of numbers ({e})') from None
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(
      f'etas: must be a non-empty 1-D grid, got shape {arr.shape}'
    )
  if not np.all(np.isfinite(arr)):
    raise ValueError(f'etas: must be finite, got {arr.tolist()}')
  if np.any(arr < 0):
    raise ValueError(f'etas: must be >= 0, got {arr.tolist()}')
  if np.any(np.diff(arr) <= 0):
    raise ValueError(
      f'etas: must be sorted strictly increasing, got {arr.tolist()}'
    )
  return arr


def resolve_strategy(
  strategy: str, chunk_size: int | None = None
) -> tuple[str, int]:
  """Resolves 'auto' to the backend default and checks the chunk size.

  Args:
    strategy: 'auto', 'vmap', 'chunked' or 'sequential'.
    chunk_size: step sizes per vmapped chunk for 'chunked' (>= 1); None keeps
      the backend default for 'auto' and 8 for 'chunked'.

  Returns:
    (strategy, chunk_size), with 'auto' replaced by DEFAULT_STRATEGIES of
    `jax.default_backend()`.
  """
  losses_lib.check_choice('strategy', strategy, ('auto', *STRATEGIES))
  if strategy == 'auto':
    backend = jax.default_backend()
    strategy, default_chunk = DEFAULT_STRATEGIES.get(backend, ('chunked', 8))
    if strategy != 'chunked' or chunk_size is None:
      chunk_size = default_chunk
  if chunk_size is None:
    chunk_size = 8
  if (
    not isinstance(chunk_size, int | np.integer)
    or isinstance(chunk_size, bool)
    or chunk_size < 1
  ):
    raise ValueError(f'chunk_size: must be an integer >= 1, got {chunk_size!r}')
  return strategy, int(chunk_size)


def losses_along(
  loss_fn: losses_lib.LossFn,
  params: PyTree,
  direction: PyTree,
  batches: Sequence[Any],
  etas: jax.Array,
  *,
  strategy: str = 'sequential',
  chunk_size: int = 8,
) -> jax.Array:
  """Losses of every batch at theta - eta d for every eta.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar`.
    params: theta.
    direction: d, a tree like params.
    batches: sequence of batches (shapes may differ).
    etas: float [K].
    strategy: 'vmap', 'chunked' or 'sequential' (not 'auto': resolve first).
    chunk_size: step sizes per vmapped chunk for 'chunked'.

  Returns:
    float [len(batches), K].
  """
  losses_lib.check_choice('strategy', strategy, STRATEGIES)

  def at(eta):
    moved = jax.tree.map(
      lambda p, d: p - eta.astype(p.dtype) * d.astype(p.dtype),
      params,
      direction,
    )
    return jnp.stack([loss_fn(moved, b) for b in batches])

  if strategy == 'vmap':
    out = jax.vmap(at)(etas)
  elif strategy == 'chunked':
    out = jax.lax.map(at, etas, batch_size=chunk_size)
  else:
    out = jax.lax.map(at, etas)
  return out.T


def line_search_fn(
  loss_fn: losses_lib.LossFn,
  params: PyTree,
  direction_batch: Any,
  eval_batches: Sequence[Any],
  etas: Any,
  *,
  direction: PyTree | None = None,
  strategy: str = 'auto',
  chunk_size: int | None = None,
) -> LineSearchInfo:
  """Line search of a generic loss along the gradient of one batch.

  g = grad L_B(theta) (or the given direction d), then
  losses[j, k] = L_j(theta - eta_k d), slope = -d . grad L_B(theta) and
  curvature = d^T H_B d with H_B d from a Hessian-vector product (forward-mode
  derivative of the gradient, linearised once and shared with g).

  Traceable: call it inside jax.jit with `loss_fn` closed over static state;
  the step sizes may then be traced (only their shape is checked).

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar`.
    params: theta.
    direction_batch: B, the batch whose gradient gives the direction.
    eval_batches: held-out batches B' (any number, shapes may differ).
    etas: step sizes, sorted strictly increasing, finite, >= 0.
    direction: optional direction d to use instead of the plain gradient (the
      step is theta - eta d, so pass minus the optimizer's update divided by
      its learning rate to follow the optimizer).
    strategy: 'auto', 'vmap', 'chunked' or 'sequential'.
    chunk_size: step sizes per chunk for 'chunked'.

  Returns:
    LineSearchInfo, with bn_mode -1.
  """
  etas = validate_etas(etas)
  strategy, chunk_size = resolve_strategy(strategy, chunk_size)
  batches = (direction_batch, *eval_batches)

  def value_and_grad(p):
    return jax.value_and_grad(loss_fn)(p, direction_batch)

  (loss_b, grad), hvp = jax.linearize(value_and_grad, params)
  plain = direction is None
  if plain:
    direction = grad
  else:
    direction = jax.tree.map(lambda d, p: d.astype(p.dtype), direction, params)
  _, h_dir = hvp(direction)

  slope = -gradients.tree_vdot(direction, grad)
  curvature = gradients.tree_vdot(direction, h_dir)
  convex = curvature > 0
  safe_curv = jnp.where(convex, curvature, 1.0)
  calculus_argmin = jnp.where(convex, -slope / safe_curv, jnp.nan)
  calculus_min = jnp.where(
    convex, loss_b - 0.5 * jnp.square(slope) / safe_curv, jnp.nan
  )

  dtype = jax.tree.leaves(params)[0].dtype
  etas = jnp.asarray(etas, dtype=dtype)
  at_zero = [loss_b] + [loss_fn(params, b) for b in eval_batches]
  losses = losses_along(
    loss_fn,
    params,
    direction,
    batches,
    etas,
    strategy=strategy,
    chunk_size=chunk_size,
  )
  grad_norm = gradients.tree_norm(grad)

  return LineSearchInfo(
    etas=etas,
    losses=losses,
    loss_at_zero=jnp.stack(at_zero),
    slope=slope,
    curvature=curvature,
    calculus_argmin=calculus_argmin,
    calculus_min=calculus_min,
    grad_norm=grad_norm,
    direction_norm=grad_norm if plain else gradients.tree_norm(direction),
    plain_gradient=jnp.asarray(plain),
    bn_mode=jnp.asarray(-1, jnp.int32),
  )


def line_search(
  model: nn.Module,
  params: PyTree,
  batch_stats: PyTree,
  direction_batch: losses_lib.Batch,
  eval_batches: Sequence[losses_lib.Batch],
  etas: Any,
  *,
  bn_mode: str = 'batch',
  direction: PyTree | None = None,
  objective: str = 'data',
  label_smoothing: float = 0.0,
  weight_decay: float = 0.0,
  strategy: str = 'auto',
  chunk_size: int | None = None,
) -> LineSearchInfo:
  """Line search of a Linen classifier along the gradient of batch B (E1, E2).

  losses[0, k] = L_B(theta - eta_k g), losses[1 + j, k] = L_{B'_j}(theta -
  eta_k g), with g = grad L_B(theta) computed once (see `line_search_fn`). The
  loss is the data loss (cross-entropy, no label smoothing, no L2) unless
  `objective='train'`. The model is never changed: in 'batch' mode the
  statistics of every evaluated batch normalise it and are then discarded.

  Jitted once per model, shapes and static options; new step-size values do
  not retrace.

  Args:
    model: Linen module.
    params: theta.
    batch_stats: BatchNorm running statistics (used in 'running' mode).
    direction_batch: B, a dict with 'image', 'label' (and optionally 'mask').
    eval_batches: held-out batches B' (may be empty; may carry 'mask').
    etas: step sizes, sorted strictly increasing, finite, >= 0. Include 0 to
      anchor the fits at theta.
    bn_mode: 'batch' (statistics of the evaluated batch) or 'running'.
    direction: optional direction d instead of the plain gradient.
    objective: 'data' or 'train' (label smoothing and coupled L2).
    label_smoothing: for the 'train' objective.
    weight_decay: for the 'train' objective, 0.5 wd |theta|^2.
    strategy: 'auto', 'vmap', 'chunked' or 'sequential'.
    chunk_size: step sizes per chunk for 'chunked'.

  Returns:
    LineSearchInfo with bn_mode recorded.

  Raises:
    ValueError: naming the field, for a bad grid or option.
  """
  etas = validate_etas(etas)
  code = losses_lib.bn_mode_code(bn_mode)
  losses_lib.check_choice('objective', objective, losses_lib.OBJECTIVES)
  strategy, chunk_size = resolve_strategy(strategy, chunk_size)
  for name, value in (
    ('label_smoothing', label_smoothing),
    ('weight_decay', weight_decay),
  ):
    if not (isinstance(value, jax.Array) or math.isfinite(value)):
      raise ValueError(f'{name}: must be finite, got {value!r}')

  info = _line_search_jit(
    model,
    params,
    batch_stats,
    direction_batch,
    tuple(eval_batches),
    jnp.asarray(etas),
    direction,
    jnp.asarray(label_smoothing),
    jnp.asarray(weight_decay),
    bn_mode,
    objective,
    strategy,
    chunk_size,
  )
  return info._replace(bn_mode=jnp.asarray(code, jnp.int32))


def _line_search(
  model,
  params,
  batch_stats,
  direction_batch,
  eval_batches,
  etas,
  direction,
  label_smoothing,
  weight_decay,
  bn_mode,
  objective,
  strategy,
  chunk_size,
):
  loss_fn = losses_lib.make_loss_fn(
    model,
    batch_stats,
    bn_mode=bn_mode,
    objective=objective,
    label_smoothing=label_smoothing,
    weight_decay=weight_decay,
  )
  return line_search_fn(
    loss_fn,
    params,
    direction_batch,
    eval_batches,
    etas,
    direction=direction,
    strategy=strategy,
    chunk_size=chunk_size,
  )


_line_search_jit = jax.jit(_line_search, static_argnums=(0, 9, 10, 11, 12))


def interpolation_losses(
  model: nn.Module,
  params_a: PyTree,
  params_b: PyTree,
  batch_stats: PyTree,
  batches: Sequence[losses_lib.Batch],
  alphas: Any,
  *,
  bn_mode: str = 'batch',
  strategy: str = 'auto',
  chunk_size: int | None = None,
) -> jax.Array:
  """Data loss of each batch along the straight line between two checkpoints.

  losses[j, k] = L_j((1 - alpha_k) theta_a + alpha_k theta_b)
               = L_j(theta_a - alpha_k (theta_a - theta_b)),
  the same sweep as the line search with direction theta_a - theta_b.

  Args:
    model: Linen module.
    params_a: theta_a (alpha = 0).
    params_b: theta_b (alpha = 1).
    batch_stats: BatchNorm statistics for 'running' mode (for example those of
      checkpoint a; no statistics match the points in between).
    batches: the fixed probe batches.
    alphas: 1-D finite grid (values outside [0, 1] extrapolate).
    bn_mode: 'batch' or 'running'.
    strategy: 'auto', 'vmap', 'chunked' or 'sequential'.
    chunk_size: step sizes per chunk for 'chunked'.

  Returns:
    float [len(batches), len(alphas)].
  """
  try:
    grid = np.asarray(alphas, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f'alphas: not an array of numbers ({e})') from None
  if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
    raise ValueError(f'alphas: must be a non-empty 1-D finite grid: {alphas}')
  losses_lib.check_choice('bn_mode', bn_mode, losses_lib.BN_MODES)
  strategy, chunk_size = resolve_strategy(strategy, chunk_size)
  return _interpolation_jit(
    model,
    params_a,
    params_b,
    batch_stats,
    tuple(batches),
    jnp.asarray(grid),
    bn_mode,
    strategy,
    chunk_size,
  )


def _interpolation(
  model,
  params_a,
  params_b,
  batch_stats,
  batches,
  alphas,
  bn_mode,
  strategy,
  chunk_size,
):
  loss_fn = losses_lib.make_loss_fn(model, batch_stats, bn_mode=bn_mode)
  direction = jax.tree.map(lambda a, b: a - b, params_a, params_b)
  return losses_along(
    loss_fn,
    params_a,
    direction,
    batches,
    alphas,
    strategy=strategy,
    chunk_size=chunk_size,
  )


_interpolation_jit = jax.jit(_interpolation, static_argnums=(0, 6, 7, 8))
