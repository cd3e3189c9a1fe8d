"""Top Hessian eigenvalues from Hessian-vector products, overall and per layer.

The Hessian H of a loss is never formed: H v is the forward-mode derivative of
the gradient (jax.jvp of jax.grad), one gradient-sized pass. 'power' iteration
converges to the eigenvalue of largest magnitude (the sharpness when, as usual,
it is positive); 'lanczos' builds a Krylov basis of `num_iters` vectors with
full reorthogonalisation and returns the largest Ritz value, which converges in
far fewer products. Both report a convergence measure: the relative residual
|H v - lambda v| / |lambda| of the returned unit vector v (an eigenvalue of H
lies within that relative distance of lambda) and the estimate after every
iteration. Per-layer eigenvalues restrict the product to one group of
parameters (a top-level module, a module, or a single leaf), i.e. they are
the top eigenvalues of the block-diagonal blocks of H.

Everything is traceable; jit the caller with the batch as an argument rather
than closing large arrays into the loss function.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sgd_quad.probes import losses as losses_lib

PyTree = Any

METHODS = ('power', 'lanczos')
GROUPINGS = ('top', 'module', 'leaf')


class EigenInfo(NamedTuple):
  """Top Hessian eigenpair estimate.

  Attributes:
    eigenvalue: float [], the estimate lambda (the Rayleigh quotient of v).
    eigenvector: tree like params, unit-norm v.
    residual: float [], |H v - lambda v| / |lambda| (inf when lambda = 0).
    history: float [num_iters], the estimate after each iteration (power: the
      Rayleigh quotient of the iterate; lanczos: the top Ritz value of the
      first j + 1 Lanczos vectors).
    method: int32 [], index into METHODS.
  """

  eigenvalue: jax.Array
  eigenvector: PyTree
  residual: jax.Array
  history: jax.Array
  method: jax.Array


def hvp(
  loss_fn: Callable[[PyTree], jax.Array], params: PyTree, vector: PyTree
) -> PyTree:
  """Hessian-vector product H v of a scalar loss at params.

  H v = d/dt grad L(params + t v) at t = 0 (forward over reverse mode).

  Args:
    loss_fn: `loss_fn(params) -> scalar`.
    params: point of evaluation.
    vector: v, a tree like params.

  Returns:
    H v, a tree like params.
  """
  return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def _flat_hvp(loss_fn, params):
  flat, unravel = ravel_pytree(params)

  def matvec(v):
    out = hvp(loss_fn, params, unravel(v.astype(flat.dtype)))
    return ravel_pytree(out)[0]

  return flat, unravel, matvec


def _safe_normalize(v):
  norm = jnp.linalg.norm(v)
  return v / jnp.where(norm > 0, norm, 1.0)


def _relative_residual(matvec, v):
  w = matvec(v)
  lam = jnp.vdot(v, w)
  res = jnp.linalg.norm(w - lam * v)
  return lam, jnp.where(lam != 0, res / jnp.abs(lam), jnp.inf)


def _power(matvec, v0, num_iters):
  def body(i, carry):
    v, _, _, hist = carry
    w = matvec(v)
    lam = jnp.vdot(v, w)
    res = jnp.linalg.norm(w - lam * v)
    hist = hist.at[i].set(lam)
    return _safe_normalize(w), v, (lam, res), hist

  dtype = v0.dtype
  init = (
    v0,
    v0,
    (jnp.zeros((), dtype), jnp.zeros((), dtype)),
    jnp.zeros((num_iters,), dtype),
  )
  _, v, (lam, res), hist = jax.lax.fori_loop(0, num_iters, body, init)
  rel = jnp.where(lam != 0, res / jnp.abs(lam), jnp.inf)
  return lam, v, rel, hist


def _lanczos(matvec, v0, num_iters):
  dim = v0.shape[0]
  dtype = v0.dtype
  tol = jnp.sqrt(jnp.finfo(dtype).eps)

  def body(j, carry):
    basis, alphas, betas, v, v_prev, beta_prev, active, scale = carry
    basis = basis.at[j].set(v)
    w = matvec(v)
    alpha = jnp.vdot(v, w)
    w = w - alpha * v - beta_prev * v_prev
    # Full reorthogonalisation, twice ("twice is enough").
    w = w - basis.T @ (basis @ w)
    w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))

    # After a breakdown (an invariant subspace was found) the remaining
    # vectors are zero and their diagonal entries copy alpha_0, which lies
    # inside the spectrum and so never becomes the top Ritz value.
    alpha = jnp.where(active, alpha, alphas[0])
    alphas = alphas.at[j].set(alpha)
    next_active = active & (beta > tol * scale)
    beta = jnp.where(next_active, beta, 0.0)
    betas = betas.at[j].set(beta)
    v_next = jnp.where(next_active, w / jnp.where(beta > 0, beta, 1.0), 0.0)
    return basis, alphas, betas, v_next, v, beta, next_active, scale

  init = (
    jnp.zeros((num_iters, dim), dtype),
    jnp.zeros((num_iters,), dtype),
    jnp.zeros((num_iters,), dtype),
    v0,
    jnp.zeros_like(v0),
    jnp.zeros((), dtype),
    jnp.asarray(True),
    jnp.zeros((), dtype),
  )
  basis, alphas, betas, *_ = jax.lax.fori_loop(0, num_iters, body, init)
  tri = (
    jnp.diag(alphas) + jnp.diag(betas[:-1], k=1) + jnp.diag(betas[:-1], k=-1)
  )
  ritz, vecs = jnp.linalg.eigh(tri)
  v = _safe_normalize(basis.T @ vecs[:, -1])
  lam, rel = _relative_residual(matvec, v)
  # Top Ritz value of each leading block T[:j+1, :j+1], all in one batched
  # eigvalsh: the trailing part is replaced by alpha_0 on the diagonal, which
  # lies inside the spectrum of the leading block and never tops it.
  idx = jnp.arange(num_iters)
  keep = (idx[None, :, None] <= idx[:, None, None]) & (
    idx[None, None, :] <= idx[:, None, None]
  )
  pad = jnp.where(idx[None, :] > idx[:, None], alphas[0], 0.0)
  blocks = jnp.where(keep, tri[None], 0.0) + jax.vmap(jnp.diag)(pad)
  hist = jnp.linalg.eigvalsh(blocks)[:, -1]
  return lam, v, rel, hist


def top_hessian_eigenvalue(
  loss_fn: Callable[[PyTree], jax.Array],
  params: PyTree,
  *,
  method: str = 'lanczos',
  num_iters: int = 20,
  key: jax.Array,
) -> EigenInfo:
  """Top eigenvalue of the Hessian of `loss_fn` at params.

  power:   v <- H v / |H v|, lambda = v^T H v; converges to the eigenvalue of
           largest magnitude at rate |lambda_2 / lambda_1| per product.
  lanczos: Krylov basis q_1..q_m of H from v_0, tridiagonal
           T = Q^T H Q, lambda = largest eigenvalue of T (Ritz value).

  Costs num_iters Hessian-vector products (lanczos one more for the residual,
  and holds num_iters parameter-sized vectors).

  Args:
    loss_fn: `loss_fn(params) -> scalar` (close over the batch).
    params: point of evaluation.
    method: 'power' or 'lanczos'.
    num_iters: Hessian-vector products (Lanczos basis size), >= 1.
    key: PRNG key for the random start vector.

  Returns:
    EigenInfo.
  """
  losses_lib.check_choice('method', method, METHODS)
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f'num_iters: must be an integer >= 1, got {num_iters!r}')
  flat, unravel, matvec = _flat_hvp(loss_fn, params)
  v0 = jax.random.normal(key, flat.shape, flat.dtype)
  v0 = _safe_normalize(v0)
  solver = _power if method == 'power' else _lanczos
  lam, v, rel, hist = solver(matvec, v0, num_iters)
  return EigenInfo(
    eigenvalue=lam,
    eigenvector=unravel(v),
    residual=rel,
    history=hist,
    method=jnp.asarray(METHODS.index(method), jnp.int32),
  )


def _path_names(path) -> list[str]:
  names = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
    else:
      names.append(str(entry))
  return names


def parameter_groups(params: PyTree, group_by: str = 'top') -> dict[str, list]:
  """Groups the leaves of a parameter tree by module path.

  Args:
    params: parameter tree (nested dicts of a Linen model).
    group_by: 'top' (first path element, e.g. 'ResNetBlock_0'), 'module' (the
      path of the module owning the leaf, e.g. 'ResNetBlock_0/Conv_0') or
      'leaf' (the full path, e.g. 'ResNetBlock_0/Conv_0/kernel').

  Returns:
    Ordered dict from group name to the list of leaf indices (in
    jax.tree.leaves order) it holds.
  """
  losses_lib.check_choice('group_by', group_by, GROUPINGS)
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  groups: dict[str, list] = {}
  for index, (path, _) in enumerate(paths):
    names = _path_names(path) or ['params']
    if group_by == 'top':
      names = names[:1]
    elif group_by == 'module' and len(names) > 1:
      names = names[:-1]
    groups.setdefault('/'.join(names), []).append(index)
  return groups


def per_layer_top_eigenvalues(
  loss_fn: Callable[[PyTree], jax.Array],
  params: PyTree,
  *,
  group_by: str = 'top',
  method: str = 'lanczos',
  num_iters: int = 20,
  key: jax.Array,
) -> dict[str, EigenInfo]:
  """Top eigenvalue of each diagonal block of the Hessian.

  For a group P of parameters, the block H_PP is the Hessian of
  theta_P -> L(theta_P, theta_rest fixed); its top eigenvalue measures the
  curvature of that layer alone.

  Args:
    loss_fn: `loss_fn(params) -> scalar`.
    params: point of evaluation.
    group_by: 'top', 'module' or 'leaf' (see `parameter_groups`).
    method: 'power' or 'lanczos'.
    num_iters: Hessian-vector products per group.
    key: PRNG key; group i uses fold_in(key, i).

  Returns:
    Dict from group name to EigenInfo, whose eigenvector is a dict from leaf
    path to array.
  """
  groups = parameter_groups(params, group_by)
  leaves, treedef = jax.tree.flatten(params)
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  names = ['/'.join(_path_names(p)) for p, _ in paths]
  out = {}
  for i, (group, indices) in enumerate(groups.items()):
    sub = {names[j]: leaves[j] for j in indices}

    def restricted(sub_params, indices=indices):
      full = list(leaves)
      for j in indices:
        full[j] = sub_params[names[j]]
      return loss_fn(jax.tree.unflatten(treedef, full))

    out[group] = top_hessian_eigenvalue(
      restricted,
      sub,
      method=method,
      num_iters=num_iters,
      key=jax.random.fold_in(key, i),
    )
  return out


class CurvatureInfo(NamedTuple):
  """Top Hessian eigenvalues of one batch's loss, overall and per group.

  Attributes:
    overall: EigenInfo of the full Hessian.
    per_layer: dict from group name to EigenInfo of its diagonal block (empty
      when no grouping was asked for).
    bn_mode: int32 [], index into losses.BN_MODES.
  """

  overall: EigenInfo
  per_layer: dict[str, EigenInfo]
  bn_mode: jax.Array


def batch_curvature(
  model: Any,
  params: PyTree,
  batch_stats: PyTree,
  batch: losses_lib.Batch,
  *,
  key: jax.Array,
  bn_mode: str = 'batch',
  method: str = 'lanczos',
  num_iters: int = 20,
  group_by: str | None = 'top',
  objective: str = 'data',
  label_smoothing: float = 0.0,
  weight_decay: float = 0.0,
) -> CurvatureInfo:
  """Top Hessian eigenvalue of a Linen classifier's loss on one batch.

  Overall and, unless `group_by` is None, per parameter group (see
  `per_layer_top_eigenvalues`). Jitted once per model, shapes and options.

  Args:
    model: Linen module.
    params: model parameters.
    batch_stats: BatchNorm statistics.
    batch: dict with 'image', 'label' (and optionally 'mask').
    key: PRNG key for the start vectors.
    bn_mode: 'batch' or 'running'.
    method: 'power' or 'lanczos'.
    num_iters: Hessian-vector products per eigenvalue.
    group_by: 'top', 'module', 'leaf' or None (overall only).
    objective: 'data' or 'train'.
    label_smoothing: for the 'train' objective.
    weight_decay: for the 'train' objective.

  Returns:
    CurvatureInfo.
  """
  code = losses_lib.bn_mode_code(bn_mode)
  losses_lib.check_choice('method', method, METHODS)
  losses_lib.check_choice('objective', objective, losses_lib.OBJECTIVES)
  if group_by is not None:
    losses_lib.check_choice('group_by', group_by, GROUPINGS)
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f'num_iters: must be an integer >= 1, got {num_iters!r}')
  overall, per_layer = _batch_curvature_jit(
    model,
    params,
    batch_stats,
    batch,
    key,
    jnp.asarray(label_smoothing),
    jnp.asarray(weight_decay),
    bn_mode,
    method,
    num_iters,
    group_by,
    objective,
  )
  return CurvatureInfo(overall, per_layer, jnp.asarray(code, jnp.int32))


def _batch_curvature(
  model,
  params,
  batch_stats,
  batch,
  key,
  label_smoothing,
  weight_decay,
  bn_mode,
  method,
  num_iters,
  group_by,
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
  batch_loss = lambda p: loss_fn(p, batch)
  key_all, key_layers = jax.random.split(key)
  overall = top_hessian_eigenvalue(
    batch_loss, params, method=method, num_iters=num_iters, key=key_all
  )
  per_layer = {}
  if group_by is not None:
    per_layer = per_layer_top_eigenvalues(
      batch_loss,
      params,
      group_by=group_by,
      method=method,
      num_iters=num_iters,
      key=key_layers,
    )
  return overall, per_layer


_batch_curvature_jit = jax.jit(
  _batch_curvature, static_argnums=(0, 7, 8, 9, 10, 11)
)
