"""Tests of sgd_quad.probes: line search, quadratic fits, gradients, curvature.

Closed-form checks on exactly quadratic losses (in float64), agreement of the
step-size strategies on a small BatchNorm conv model, gradient statistics
against numpy, eigenvalues against np.linalg.eigvalsh, figures on disk and
errors for bad input.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgd_quad import probes
from sgd_quad.probes import sweep

# A quadratic loss 0.5 (x - c)^T A (x - c) + k over a two-leaf tree.


def _spd(dim, seed, evals=None):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  if evals is None:
    evals = rng.uniform(0.2, 3.0, size=dim)
  return (q * np.asarray(evals)) @ q.T


def _split(x):
  return {'a': x[:3], 'b': x[3:].reshape(2, 2)}


def _flat(tree):
  return jnp.concatenate([tree['a'], tree['b'].reshape(-1)])


def _quadratic_problem(dtype):
  dim = 7
  mat = _spd(dim, 0)
  rng = np.random.default_rng(1)
  x = rng.normal(size=dim)
  centres = [rng.normal(size=dim) for _ in range(3)]
  offsets = [0.3, 1.2, -0.4]
  batches = [
    {'c': jnp.asarray(c, dtype), 'k': jnp.asarray(k, dtype)}
    for c, k in zip(centres, offsets, strict=True)
  ]
  mat_j = jnp.asarray(mat, dtype)

  def loss_fn(params, batch):
    r = _flat(params) - batch['c']
    return 0.5 * r @ mat_j @ r + batch['k']

  params = _split(jnp.asarray(x, dtype))
  return loss_fn, params, batches, mat, x, centres, offsets


def _search(loss_fn, params, batches, etas, **kwargs):
  """Runs line_search_fn under jit (the grid is a compile-time constant)."""
  fn = lambda p, b0, bs: probes.line_search_fn(
    loss_fn, p, b0, bs, etas, **kwargs
  )
  return jax.jit(fn)(params, batches[0], batches[1:])


def _closed_form(mat, x, centres, offsets):
  """Exact (c0, c1, c2) of L_j(x - eta g) with g the gradient of batch 0."""
  g = mat @ (x - centres[0])
  rows = []
  for c, k in zip(centres, offsets, strict=True):
    r = x - c
    rows.append([0.5 * r @ mat @ r + k, -g @ mat @ r, 0.5 * g @ mat @ g])
  return np.asarray(rows), g


@pytest.mark.parametrize('grid', ['linear', 'log'])
def test_fit_recovers_exact_quadratic_float64(grid):
  with jax.enable_x64(True):
    loss_fn, params, batches, mat, x, centres, offsets = _quadratic_problem(
      jnp.float64
    )
    coeffs, g = _closed_form(mat, x, centres, offsets)
    eta_star = (g @ g) / (g @ mat @ g)
    if grid == 'linear':
      etas = np.linspace(0.0, 2.0 * eta_star, 11)
    else:
      etas = np.concatenate([[0.0], np.geomspace(1e-3, 10.0, 20) * eta_star])

    info = _search(loss_fn, params, batches, etas, strategy='sequential')
    fits = probes.fit_quadratic(info.etas, info.losses)

    np.testing.assert_allclose(fits.coeffs, coeffs, rtol=1e-5, atol=1e-9)
    argmins = -coeffs[:, 1] / (2 * coeffs[:, 2])
    np.testing.assert_allclose(fits.argmin, argmins, rtol=1e-5)
    np.testing.assert_allclose(fits.argmin[0], eta_star, rtol=1e-5)
    np.testing.assert_allclose(fits.r2, 1.0, atol=1e-9)
    assert bool(np.all(fits.convex))

    # Fit and calculus agree: slope = c1 = -|g|^2, curvature = 2 c2.
    np.testing.assert_allclose(info.slope, -(g @ g), rtol=1e-10)
    np.testing.assert_allclose(info.curvature, g @ mat @ g, rtol=1e-10)
    np.testing.assert_allclose(fits.coeffs[0, 1], info.slope, rtol=1e-5)
    np.testing.assert_allclose(2 * fits.coeffs[0, 2], info.curvature, rtol=1e-5)
    np.testing.assert_allclose(info.calculus_argmin, fits.argmin[0], rtol=1e-5)
    np.testing.assert_allclose(info.calculus_min, fits.min_loss[0], rtol=1e-5)
    np.testing.assert_allclose(info.grad_norm, np.linalg.norm(g), rtol=1e-10)
    np.testing.assert_allclose(info.loss_at_zero, coeffs[:, 0], rtol=1e-12)
    assert bool(info.plain_gradient)
    assert int(info.bn_mode) == -1


def test_fit_exact_quadratic_float32_close():
  loss_fn, params, batches, mat, x, centres, offsets = _quadratic_problem(
    jnp.float32
  )
  coeffs, g = _closed_form(mat, x, centres, offsets)
  eta_star = (g @ g) / (g @ mat @ g)
  etas = np.linspace(0.0, 2.0 * eta_star, 11)
  info = _search(loss_fn, params, batches, etas)
  fits = probes.fit_quadratic(info.etas, info.losses)
  np.testing.assert_allclose(fits.argmin[0], eta_star, rtol=1e-3)
  np.testing.assert_allclose(info.curvature, g @ mat @ g, rtol=1e-5)


def test_direction_argument_scales_the_step():
  with jax.enable_x64(True):
    loss_fn, params, batches, *_ = _quadratic_problem(jnp.float64)
    etas = np.linspace(0.0, 0.5, 6)
    plain = _search(loss_fn, params, batches[:1], 2 * etas)
    grad = jax.grad(loss_fn)(params, batches[0])
    doubled = jax.tree.map(lambda g: 2 * g, grad)
    info = _search(loss_fn, params, batches[:1], etas, direction=doubled)
    np.testing.assert_allclose(info.losses, plain.losses, rtol=1e-12)
    assert not bool(info.plain_gradient)
    np.testing.assert_allclose(info.direction_norm, 2 * plain.grad_norm)
    np.testing.assert_allclose(info.slope, 2 * plain.slope, rtol=1e-12)
    np.testing.assert_allclose(info.curvature, 4 * plain.curvature, rtol=1e-12)


# A small BatchNorm conv model.


class _TinyBNConv(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(3)(x)


def _images(key, n):
  k1, k2 = jax.random.split(key)
  return {
    'image': jax.random.normal(k1, (n, 8, 8, 1)),
    'label': jax.random.randint(k2, (n,), 0, 3),
  }


@pytest.fixture(scope='module')
def bn_setup():
  model = _TinyBNConv()
  key = jax.random.key(0)
  batches = [_images(jax.random.fold_in(key, i), 16) for i in range(3)]
  # Jitted: eager init and apply dispatch op by op and are slow on CPU.
  variables = jax.jit(model.init)(key, batches[0]['image'])
  # Non-trivial running statistics: one training-mode pass.
  _, updates = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, batches[2]['image'])
  return model, variables['params'], updates['batch_stats'], batches


_BN_ETAS = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]


@pytest.fixture(scope='module')
def bn_info(bn_setup):
  model, params, stats, batches = bn_setup
  return probes.line_search(
    model,
    params,
    stats,
    batches[0],
    batches[1:],
    _BN_ETAS,
    bn_mode='batch',
    strategy='sequential',
  )


def test_line_search_on_bn_model_matches_forward_passes(bn_setup, bn_info):
  model, params, stats, batches = bn_setup
  loss_fn = jax.jit(probes.make_loss_fn(model, stats, bn_mode='batch'))
  grad = jax.jit(jax.grad(loss_fn))(params, batches[0])
  for k, eta in enumerate(_BN_ETAS):
    moved = jax.tree.map(lambda p, g, eta=eta: p - eta * g, params, grad)
    for j, batch in enumerate(batches):
      np.testing.assert_allclose(
        bn_info.losses[j, k], loss_fn(moved, batch), rtol=2e-5, atol=1e-6
      )
  assert bn_info.losses.shape == (3, len(_BN_ETAS))
  assert int(bn_info.bn_mode) == probes.BN_MODES.index('batch')
  assert bool(bn_info.plain_gradient)
  np.testing.assert_allclose(
    bn_info.loss_at_zero, bn_info.losses[:, 0], rtol=1e-6
  )
  np.testing.assert_allclose(bn_info.slope, -(bn_info.grad_norm**2), rtol=1e-5)

  # The HVP curvature and slope against central differences along g.
  h = 0.02
  f = [
    loss_fn(jax.tree.map(lambda p, g, e=e: p - e * g, params, grad), batches[0])
    for e in (-h, 0.0, h)
  ]
  np.testing.assert_allclose(
    (f[0] - 2 * f[1] + f[2]) / h**2, bn_info.curvature, rtol=0.05
  )
  np.testing.assert_allclose((f[2] - f[0]) / (2 * h), bn_info.slope, rtol=1e-3)


def test_strategies_agree_on_bn_model(bn_setup, bn_info):
  model, params, stats, batches = bn_setup
  loss_fn = probes.make_loss_fn(model, stats, bn_mode='batch')
  direction = jax.jit(jax.grad(loss_fn))(params, batches[0])
  etas = jnp.asarray(_BN_ETAS)
  results = {}
  for strategy, chunk in [('vmap', 1), ('chunked', 3), ('sequential', 1)]:
    fn = jax.jit(
      lambda p, d, bs, e, strategy=strategy, chunk=chunk: probes.losses_along(
        loss_fn, p, d, bs, e, strategy=strategy, chunk_size=chunk
      )
    )
    results[strategy] = fn(params, direction, batches, etas)
  for losses in results.values():
    np.testing.assert_allclose(
      losses, results['sequential'], rtol=2e-5, atol=1e-6
    )
  # The same losses as the model-level line search (vmap vs sequential).
  np.testing.assert_allclose(
    results['vmap'], bn_info.losses, rtol=2e-5, atol=1e-6
  )


def test_line_search_jits_once_per_shape(bn_setup, bn_info):
  model, params, stats, batches = bn_setup
  size = sweep._line_search_jit._cache_size()
  other = probes.line_search(
    model,
    params,
    stats,
    batches[0],
    batches[1:],
    [0.0, 0.02, 0.05, 0.2, 0.5, 2.0, 5.0],
    bn_mode='batch',
    strategy='sequential',
  )
  assert sweep._line_search_jit._cache_size() == size
  np.testing.assert_allclose(other.slope, bn_info.slope, rtol=1e-6)


def test_masked_padding_and_train_objective(bn_setup):
  model, params, stats, batches = bn_setup
  batch = batches[1]
  padded = {
    'image': jnp.concatenate([batch['image'], 100 + batch['image'][:4]]),
    'label': jnp.concatenate([batch['label'], batch['label'][:4]]),
    'mask': jnp.concatenate([jnp.ones(16), jnp.zeros(4)]),
  }
  losses = probes.batch_losses(
    model, params, stats, [batch, padded], bn_mode='running'
  )
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)

  wd, ls = 1e-3, 0.1
  loss_fn = probes.make_loss_fn(
    model, stats, objective='train', label_smoothing=ls, weight_decay=wd
  )
  logits, _ = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  )({'params': params, 'batch_stats': stats}, batches[0]['image'])
  targets = (1 - ls) * jax.nn.one_hot(batches[0]['label'], 3) + ls / 3
  ce = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))
  l2 = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
  np.testing.assert_allclose(
    jax.jit(loss_fn)(params, batches[0]), ce + 0.5 * wd * l2, rtol=1e-5
  )


def test_interpolation_losses_end_points(bn_setup, bn_info):
  model, params, stats, batches = bn_setup
  other = jax.tree.map(lambda p: 0.9 * p + 0.01, params)
  path = probes.interpolation_losses(
    model, params, other, stats, batches, [0.0, 0.5, 1.0]
  )
  ends = [
    probes.batch_losses(model, p, stats, batches) for p in (params, other)
  ]
  np.testing.assert_allclose(path[:, 0], ends[0], rtol=1e-5)
  np.testing.assert_allclose(path[:, 0], bn_info.loss_at_zero, rtol=1e-5)
  np.testing.assert_allclose(path[:, 2], ends[1], rtol=1e-5)
  with pytest.raises(ValueError, match='alphas'):
    probes.interpolation_losses(model, params, other, stats, batches, [])


# Quadratic fits: windows, flags, shapes.


def test_fit_windows_and_flags():
  etas = np.linspace(0.0, 1.0, 11)
  curve = (etas - 0.3) ** 2 + 1.0
  full = probes.fit_quadratic(etas, curve)
  win = probes.fit_quadratic(etas, curve, window='argmin2')
  np.testing.assert_array_equal(full.window_mask, np.ones(11, bool))
  np.testing.assert_array_equal(win.window_mask, etas <= 0.6 + 1e-9)
  assert int(win.num_points) == 7
  assert bool(win.windowed) and not bool(full.windowed)
  np.testing.assert_allclose(win.argmin, 0.3, rtol=1e-4)
  np.testing.assert_allclose(win.grid_argmin, 0.3)
  np.testing.assert_allclose(win.grid_min, 1.0, rtol=1e-6)
  np.testing.assert_allclose(full.coeffs, [1.09, -0.6, 1.0], atol=1e-4)

  # Argmin at the first point: the window still holds 3 points.
  rising = probes.fit_quadratic(etas, etas**2 + etas, window='argmin2')
  assert int(rising.num_points) == 3

  # Diverged (non-finite) points are left out.
  blown = curve.copy()
  blown[-2:] = [np.inf, np.nan]
  fit = probes.fit_quadratic(etas, blown)
  assert int(fit.num_points) == 9
  np.testing.assert_allclose(fit.argmin, 0.3, rtol=1e-4)

  concave = probes.fit_quadratic(etas, -((etas - 0.5) ** 2))
  assert not bool(concave.convex)

  bumpy = probes.fit_quadratic(etas, np.exp(3 * etas))
  assert 0.9 < float(bumpy.r2) < 1.0
  np.testing.assert_allclose(
    bumpy.rel_residual, np.sqrt(1 - bumpy.r2), rtol=1e-3
  )
  y = np.exp(3 * etas)
  resid = y - np.polyval(np.polyfit(etas, y, 2), etas)
  np.testing.assert_allclose(
    bumpy.rms_residual, np.sqrt(np.mean(resid**2)), rtol=1e-3
  )


def test_fit_is_vectorised_and_jittable():
  etas = np.linspace(0.0, 2.0, 9)
  rng = np.random.default_rng(0)
  curves = rng.normal(size=(2, 3, 9)) + 2 * etas**2
  fits = probes.fit_quadratic(etas, curves, window='argmin2')
  assert fits.coeffs.shape == (2, 3, 3)
  assert fits.r2.shape == (2, 3)
  assert fits.window_mask.shape == (2, 3, 9)

  # One curve, inside the caller's jit: the same numbers.
  one = jax.jit(lambda e, y: probes.fit_quadratic(e, y, window='argmin2'))(
    jnp.asarray(etas), jnp.asarray(curves[1, 2])
  )
  np.testing.assert_allclose(fits.coeffs[1, 2], one.coeffs, rtol=1e-5)
  np.testing.assert_allclose(fits.r2[1, 2], one.r2, rtol=1e-5)
  np.testing.assert_array_equal(fits.window_mask[1, 2], one.window_mask)


# Gradient statistics.


def _linear_problem():
  rng = np.random.default_rng(3)
  w = rng.normal(size=4)
  b = 0.5
  xs = rng.normal(size=(5, 8, 4))
  ys = rng.normal(size=(5, 8))

  def loss_fn(params, batch):
    r = batch['x'] @ params['w'] + params['b'] - batch['y']
    return 0.5 * jnp.mean(r**2)

  def np_grad(x, y):
    r = x @ w + b - y
    return np.concatenate([x.T @ r / len(y), [np.mean(r)]])

  params = {'w': jnp.asarray(w, jnp.float32), 'b': jnp.asarray(b, jnp.float32)}
  batches = [
    {'x': jnp.asarray(x, jnp.float32), 'y': jnp.asarray(y, jnp.float32)}
    for x, y in zip(xs, ys, strict=True)
  ]
  grads = np.stack([np_grad(x, y) for x, y in zip(xs, ys, strict=True)])
  return loss_fn, params, batches, grads


def test_gradient_statistics_against_numpy():
  loss_fn, params, batches, grads = _linear_problem()
  direction = jax.grad(loss_fn)(params, batches[0])
  stats = probes.gradient_statistics_fn(
    loss_fn, params, batches[1:], direction=direction
  )
  g = grads[1:]
  mean = g.mean(axis=0)
  np.testing.assert_allclose(
    np.concatenate([stats.mean_grad['w'], [stats.mean_grad['b']]]),
    mean,
    rtol=1e-5,
  )
  np.testing.assert_allclose(stats.grad_norms, np.linalg.norm(g, axis=1), 1e-5)
  cos = g @ mean / (np.linalg.norm(g, axis=1) * np.linalg.norm(mean))
  np.testing.assert_allclose(stats.cos_to_mean, cos, rtol=1e-5, atol=1e-6)
  noise = np.sum((g - mean) ** 2) / (len(g) - 1)
  np.testing.assert_allclose(stats.noise_trace, noise, rtol=1e-5)
  d = grads[0]
  np.testing.assert_allclose(
    stats.direction_cos,
    d @ mean / (np.linalg.norm(d) * np.linalg.norm(mean)),
    rtol=1e-5,
  )
  np.testing.assert_allclose(stats.mean_grad_norm, np.linalg.norm(mean), 1e-5)


def test_cosine_of_trees():
  a = {'x': jnp.array([1.0, 0.0]), 'y': jnp.array([[2.0]])}
  b = {'x': jnp.array([1.0, 1.0]), 'y': jnp.array([[0.0]])}
  expected = 1.0 / (np.sqrt(5.0) * np.sqrt(2.0))
  np.testing.assert_allclose(probes.cosine(a, b), expected, rtol=1e-6)
  zero = jax.tree.map(jnp.zeros_like, a)
  assert np.isnan(probes.cosine(a, zero))


def test_gradient_statistics_on_bn_model(bn_setup):
  model, params, stats, batches = bn_setup
  out = probes.gradient_statistics(
    model,
    params,
    stats,
    batches[1:],
    bn_mode='running',
    direction_batch=batches[0],
  )
  assert out.grad_norms.shape == (2,)
  assert int(out.bn_mode) == probes.BN_MODES.index('running')
  loss_fn = probes.make_loss_fn(model, stats, bn_mode='running')
  grad_fn = jax.jit(jax.grad(loss_fn))
  g0 = grad_fn(params, batches[0])
  np.testing.assert_allclose(
    out.direction_cos, probes.cosine(g0, out.mean_grad), rtol=1e-4
  )
  # Two batches: the noise trace is |g_1 - g_2|^2 / 2.
  g1, g2 = (grad_fn(params, b) for b in batches[1:])
  diff = jax.tree.map(lambda a, b: a - b, g1, g2)
  np.testing.assert_allclose(
    out.noise_trace, 0.5 * probes.tree_vdot(diff, diff), rtol=1e-4
  )


# Curvature.


def _quadratic_hessian(mat):
  mat_j = jnp.asarray(mat)

  def loss_fn(params):
    x = jnp.concatenate([params['x'], params['y']])
    return 0.5 * x @ mat_j @ x + jnp.sum(jnp.sin(params['x']) * 0)

  dtype = mat_j.dtype
  params = {'x': jnp.ones(3, dtype), 'y': jnp.ones(5, dtype)}
  return loss_fn, params


@pytest.mark.parametrize(
  'method,num_iters', [('power', 300), ('lanczos', 8), ('lanczos', 12)]
)
def test_top_eigenvalue_against_eigvalsh(method, num_iters):
  with jax.enable_x64(True):
    mat = _spd(8, 5, evals=[5.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 1.5])
    loss_fn, params = _quadratic_hessian(mat)
    info = jax.jit(
      lambda p, k: probes.top_hessian_eigenvalue(
        loss_fn, p, method=method, num_iters=num_iters, key=k
      )
    )(params, jax.random.key(0))
    top = np.linalg.eigvalsh(mat)[-1]
    np.testing.assert_allclose(info.eigenvalue, top, rtol=1e-6)
    assert float(info.residual) < 1e-4
    assert info.history.shape == (num_iters,)
    v = np.concatenate([info.eigenvector['x'], info.eigenvector['y']])
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-8)
    np.testing.assert_allclose(mat @ v, top * v, atol=1e-4)


def test_per_layer_eigenvalues_are_block_eigenvalues():
  with jax.enable_x64(True):
    mat = _spd(8, 7)
    loss_fn, params = _quadratic_hessian(mat)
    out = jax.jit(
      lambda p, k: probes.per_layer_top_eigenvalues(
        loss_fn, p, method='lanczos', num_iters=6, key=k
      )
    )(params, jax.random.key(1))
    assert list(out) == ['x', 'y']
    np.testing.assert_allclose(
      out['x'].eigenvalue, np.linalg.eigvalsh(mat[:3, :3])[-1], rtol=1e-6
    )
    np.testing.assert_allclose(
      out['y'].eigenvalue, np.linalg.eigvalsh(mat[3:, 3:])[-1], rtol=1e-6
    )


def test_batch_curvature_on_bn_model(bn_setup):
  model, params, stats, batches = bn_setup
  out = probes.batch_curvature(
    model,
    params,
    stats,
    batches[0],
    key=jax.random.key(2),
    method='power',
    num_iters=5,
    group_by=None,
  )
  assert out.per_layer == {}
  assert int(out.bn_mode) == probes.BN_MODES.index('batch')
  assert out.overall.history.shape == (5,)
  assert np.isfinite(float(out.overall.eigenvalue))
  assert jax.tree.structure(out.overall.eigenvector) == jax.tree.structure(
    params
  )


def test_parameter_groups():
  params = {
    'Block_0': {'Conv_0': {'kernel': 1.0, 'bias': 2.0}, 'scale': 3.0},
    'Dense_0': {'kernel': 4.0},
  }
  assert list(probes.parameter_groups(params, 'top')) == ['Block_0', 'Dense_0']
  assert list(probes.parameter_groups(params, 'module')) == [
    'Block_0/Conv_0',
    'Block_0',
    'Dense_0',
  ]
  assert len(probes.parameter_groups(params, 'leaf')) == 4


# Figures.


def test_plots_write_png_files(tmp_path):
  loss_fn, params, batches, *_ = _quadratic_problem(jnp.float32)
  etas = np.concatenate([[0.0], np.geomspace(1e-3, 1.0, 12)])
  info = _search(loss_fn, params, batches, etas)
  fits = probes.fit_quadratic(etas, info.losses, window='argmin2')
  path = tmp_path / 'sub' / 'line_search.png'
  probes.plot_line_search(path, etas, info, fits, 0.05, ['B', "B'1", "B'2"])
  probes.plot_trajectory_losses(
    tmp_path / 'traj.png', np.arange(5), np.random.rand(3, 5), ['a', 'b', 'c']
  )
  for png in (path, tmp_path / 'traj.png'):
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  leftovers = [n for n in os.listdir(path.parent) if n.endswith('.tmp')]
  assert not leftovers


# Bad input.


@pytest.mark.parametrize(
  'etas',
  [
    [],
    [np.nan, 1.0],
    [0.0, np.inf],
    [0.2, 0.1],
    [0.1, 0.1],
    [-0.1, 0.2],
    [[0.0, 0.1]],
    ['a', 'b'],
  ],
)
def test_bad_etas_raise_naming_etas(etas, bn_setup):
  with pytest.raises(ValueError, match='etas'):
    probes.validate_etas(etas)
  model, params, stats, batches = bn_setup
  with pytest.raises(ValueError, match='etas'):
    probes.line_search(model, params, stats, batches[0], [], etas)


def test_bad_options_raise_naming_field(bn_setup):
  model, params, stats, batches = bn_setup
  etas = [0.0, 0.1]
  for kwargs, field in [
    (dict(bn_mode='train'), 'bn_mode'),
    (dict(strategy='fast'), 'strategy'),
    (dict(strategy='chunked', chunk_size=0), 'chunk_size'),
    (dict(objective='l2'), 'objective'),
  ]:
    with pytest.raises(ValueError, match=field):
      probes.line_search(model, params, stats, batches[0], [], etas, **kwargs)
  with pytest.raises(ValueError, match='window'):
    probes.fit_quadratic(np.arange(4.0), np.arange(4.0), window='half')
  with pytest.raises(ValueError, match='method'):
    probes.top_hessian_eigenvalue(
      lambda p: p @ p, jnp.ones(2), method='qr', key=jax.random.key(0)
    )
