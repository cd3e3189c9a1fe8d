"""Tests of the ResNet models and their registry.

Parameter counts are checked exactly against the published architectures from
shapes alone (`jax.eval_shape`), so no large net is ever initialised; the
behaviour checks (dtypes, BatchNorm statistics, initialisation) run on the
small nets.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgd_quad.errors import ConfigError
from sgd_quad.models import MODELS, create_model, param_count


def _basic_block(c_in: int, c_out: int, projection: bool) -> int:
  """Parameters of a basic block: two 3x3 convolutions and two BatchNorms."""
  count = 9 * c_in * c_out + 9 * c_out * c_out + 2 * (2 * c_out)
  if projection:
    count += c_in * c_out + 2 * c_out
  return count


# He et al. 2016, sec. 4.2, table 6 gives 0.27M parameters for ResNet-20.
# Stem: 3x3x3x16 conv = 432, BN 2 * 16 = 32                       ->     464
# Stage 1 (16 ch): 3 blocks x (2 * 9*16*16 + 2 * 2*16) = 3 * 4,672 ->  14,016
# Stage 2 (32 ch): first block 9*16*32 + 9*32*32 + 2 * 2*32 = 13,952,
#   two more 2 * (2 * 9*32*32 + 2 * 2*32) = 37,120                  ->  51,072
# Stage 3 (64 ch): first block 9*32*64 + 9*64*64 + 2 * 2*64 = 55,552,
#   two more 2 * (2 * 9*64*64 + 2 * 2*64) = 147,968                 -> 203,520
# Option A shortcuts have no parameters. Head: 64 * 10 + 10         ->     650
# Total                                                               269,722
RESNET20_CIFAR10 = (
  (9 * 3 * 16 + 2 * 16)
  + 3 * _basic_block(16, 16, False)
  + _basic_block(16, 32, False)
  + 2 * _basic_block(32, 32, False)
  + _basic_block(32, 64, False)
  + 2 * _basic_block(64, 64, False)
  + (64 * 10 + 10)
)

# resnet_tiny: stem 9*1*8 + 2*8 = 88; block 8->8: 2 * 576 + 32 = 1,184;
# block 8->16, stride 2, projected: 1,152 + 2,304 + 64 + (128 + 32) = 3,680;
# head 16 * 10 + 10 = 170. Total 5,122.
RESNET_TINY_DIGITS = (
  (9 * 1 * 8 + 2 * 8)
  + _basic_block(8, 8, False)
  + _basic_block(8, 16, True)
  + (16 * 10 + 10)
)

# resnet_digits: the same layout at twice the width. Stem 144 + 32 = 176;
# block 16->16: 4,672; block 16->32 projected: 4,608 + 9,216 + 128 + 576 =
# 14,528; head 330. Total 19,706.
RESNET_DIGITS = (
  (9 * 1 * 16 + 2 * 16)
  + _basic_block(16, 16, False)
  + _basic_block(16, 32, True)
  + (32 * 10 + 10)
)

# name: (num_classes, input shape, expected parameter count).
EXPECTED = {
  'resnet_tiny': (10, (1, 8, 8, 1), RESNET_TINY_DIGITS),
  'resnet_digits': (10, (1, 8, 8, 1), RESNET_DIGITS),
  'resnet20': (10, (1, 32, 32, 3), RESNET20_CIFAR10),
  # The CIFAR ResNet-18 of kuangliu/pytorch-cifar and most CIFAR papers.
  'resnet18_cifar': (10, (1, 32, 32, 3), 11_173_962),
  # torchvision resnet18 / resnet34 / resnet50 (v1.5), BN scale and bias
  # included, running statistics not.
  'resnet18': (1000, (1, 224, 224, 3), 11_689_512),
  'resnet34': (1000, (1, 224, 224, 3), 21_797_672),
  'resnet50': (1000, (1, 224, 224, 3), 25_557_032),
}

SMALL = ('resnet_tiny', 'resnet_digits')
DIGITS_SHAPE = (16, 8, 8, 1)


def _images(shape, seed=0):
  # Drawn on the host: an eager jax.random draw would compile for seconds.
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


@functools.partial(jax.jit, static_argnums=0)
def _init(model, images):
  # The partitionable threefry of jax 0.10 makes XLA:CPU compile each 4-D
  # kernel's draw for seconds; the classic one compiles in a fraction of that
  # and only changes which random values are drawn.
  with jax.threefry_partitionable(False):
    return model.init(jax.random.key(0), images, train=False)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _apply(model, variables, images, train, capture=False):
  """Applies `model`, returning (logits, new batch_stats, intermediates)."""
  mutable = ['batch_stats', 'intermediates'] if capture else ['batch_stats']
  logits, state = model.apply(
    variables,
    images,
    train=train,
    mutable=mutable,
    capture_intermediates=capture,
  )
  return logits, state['batch_stats'], state.get('intermediates', {})


@pytest.fixture(scope='module')
def variables():
  """Initial variables of the small models, initialised once per module.

  resnet_digits starts with zero residual scales, so one initialisation
  serves both the zero-init and the Kaiming-init tests.
  """
  images = _images(DIGITS_SHAPE)
  tiny = create_model('resnet_tiny', num_classes=10)
  digits = create_model(
    'resnet_digits', num_classes=10, zero_init_residual=True
  )
  return {
    'resnet_tiny': _init(tiny, images),
    'resnet_digits': _init(digits, images),
  }


def test_every_model_has_an_expected_count():
  assert set(EXPECTED) == set(MODELS)


def test_resnet20_matches_the_published_size():
  assert RESNET20_CIFAR10 == 269_722
  assert round(RESNET20_CIFAR10 / 1e6, 2) == 0.27


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_param_count(name):
  num_classes, shape, expected = EXPECTED[name]
  model = create_model(name, num_classes=num_classes)
  assert param_count(model, shape) == expected


@pytest.mark.parametrize(
  'name, shape',
  [
    ('resnet20', (2, 32, 32, 3)),
    ('resnet18_cifar', (2, 32, 32, 3)),
    ('resnet18', (2, 224, 224, 3)),
    ('resnet50', (2, 224, 224, 3)),
  ],
)
def test_large_models_give_float32_logits(name, shape):
  model = create_model(name, num_classes=100, dtype=jnp.bfloat16)
  images = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), images
  )
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  logits = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), variables, images
  )
  assert logits.shape == (2, 100)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('name', SMALL)
def test_bfloat16_compute_float32_params_and_logits(name, variables):
  model = create_model(name, num_classes=10, dtype='bfloat16')
  images = _images(DIGITS_SHAPE)
  init_shapes = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), images
  )
  for leaf in jax.tree.leaves(init_shapes):
    assert leaf.dtype == jnp.float32

  # Compile and run the smallest net only; shapes and dtypes suffice for the
  # other.
  def apply(v, x):
    return _apply(model, v, x, True, True)

  run = (
    apply if name == 'resnet_tiny' else functools.partial(jax.eval_shape, apply)
  )
  logits, stats, acts = run(variables[name], images)
  assert logits.shape == (16, 10)
  assert logits.dtype == jnp.float32
  (stem_out,) = acts['stem_conv']['__call__']
  assert stem_out.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(stats):
    assert leaf.dtype == jnp.float32
  if name == 'resnet_tiny':
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_train_updates_batch_stats_and_eval_does_not(variables):
  model = create_model('resnet_tiny', num_classes=10)
  start = variables['resnet_tiny']
  images = _images(DIGITS_SHAPE, seed=1) + 3.0

  train_logits, stats, _ = _apply(model, start, images, True, True)
  old = jax.tree.leaves(start['batch_stats'])
  new = jax.tree.leaves(stats)
  assert len(old) == len(new) == 12
  assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))

  eval_logits, stats, _ = _apply(model, start, images, False)
  jax.tree.map(np.testing.assert_array_equal, stats, start['batch_stats'])
  assert not np.allclose(eval_logits, train_logits)

  # Without `mutable`, a write to batch_stats would raise.
  jax.eval_shape(lambda v, x: model.apply(v, x, train=False), start, images)


def _bn_pairs(model, variables, images):
  """Pairs each BatchNorm's new running stats with its input's activations."""
  _, stats, acts = _apply(model, variables, images, True, True)
  conv_of = {'stem_bn': 'stem_conv', 'proj_bn': 'proj_conv'}
  conv_of.update({f'bn{i}': f'conv{i}' for i in (1, 2, 3)})
  pairs = []

  def visit(stats, acts, path):
    for key, value in stats.items():
      if 'mean' in value:
        (x,) = acts[conv_of[key]]['__call__']
        pairs.append((path + key, value, x))
      else:
        visit(value, acts[key], f'{path}{key}/')

  visit(stats, acts, '')
  return pairs


def test_zero_momentum_makes_running_stats_the_batch_stats(variables):
  model = create_model('resnet_tiny', num_classes=10)
  images = _images(DIGITS_SHAPE, seed=2) * 2.0 + 1.0

  pairs = _bn_pairs(
    model.clone(bn_momentum=0.0), variables['resnet_tiny'], images
  )
  assert len(pairs) == 6
  for path, stats, x in pairs:
    np.testing.assert_allclose(
      stats['mean'], x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6, err_msg=path
    )
    np.testing.assert_allclose(
      stats['var'], x.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6, err_msg=path
    )

  # Default momentum 0.9 from zero means: 0.9 * 0 + 0.1 * batch mean.
  pairs = _bn_pairs(model, variables['resnet_tiny'], images)
  for path, stats, x in pairs:
    np.testing.assert_allclose(
      stats['mean'],
      0.1 * x.mean(axis=(0, 1, 2)),
      rtol=1e-5,
      atol=1e-7,
      err_msg=path,
    )


@pytest.mark.parametrize('name', ['resnet_tiny', 'resnet20', 'resnet50'])
def test_bn_options_reach_every_batchnorm(name):
  model = create_model(name, num_classes=10, bn_momentum=0.5, bn_epsilon=1e-3)
  seen = []

  def record(next_fun, args, kwargs, context):
    if (
      isinstance(context.module, nn.BatchNorm)
      and context.method_name == '__call__'
    ):
      seen.append((context.module.momentum, context.module.epsilon))
    return next_fun(*args, **kwargs)

  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=True), images
    )
  expected = {'resnet_tiny': 6, 'resnet20': 19, 'resnet50': 53}[name]
  assert len(seen) == expected
  assert set(seen) == {(0.5, 1e-3)}


def test_zero_init_residual(variables):
  params = variables['resnet_digits']['params']
  blocks = [name for name in params if name.startswith('stage')]
  assert len(blocks) == 2
  for name in blocks:
    np.testing.assert_array_equal(params[name]['bn2']['scale'], 0.0)
    np.testing.assert_array_equal(params[name]['bn1']['scale'], 1.0)
    if 'proj_bn' in params[name]:
      np.testing.assert_array_equal(params[name]['proj_bn']['scale'], 1.0)

  # Off by default.
  params = variables['resnet_tiny']['params']
  for name in ('stage1_block1', 'stage2_block1'):
    np.testing.assert_array_equal(params[name]['bn2']['scale'], 1.0)


def test_bottleneck_v1_5_layout_and_zero_init_target():
  model = create_model('resnet50', num_classes=10, zero_init_residual=True)
  zero_scaled = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.BatchNorm) and context.method_name == '__call__':
      if module.scale_init is nn.initializers.zeros:
        zero_scaled.append(module.name)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    params = jax.eval_shape(
      lambda: model.init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False
      )
    )['params']
  # One zero-scaled BatchNorm per block, the last of its branch.
  assert zero_scaled == ['bn3'] * (3 + 4 + 6 + 3)

  block = params['stage2_block1']
  assert set(block) == {
    'conv1',
    'bn1',
    'conv2',
    'bn2',
    'conv3',
    'bn3',
    'proj_conv',
    'proj_bn',
  }
  assert block['conv1']['kernel'].shape == (1, 1, 256, 128)
  assert block['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert block['proj_conv']['kernel'].shape == (1, 1, 256, 512)
  assert params['stem_conv']['kernel'].shape == (7, 7, 3, 64)

  # v1.5: the stride sits in the 3x3 convolution, not in conv1. A 64x64
  # image is 16x16 after the stem and max-pool, 8x8 after stage 2's stride.
  _, state = jax.eval_shape(
    lambda p: model.apply(
      {'params': p},  # batch_stats are mutable, so created here
      jnp.zeros((1, 64, 64, 3)),
      train=True,
      mutable=['batch_stats', 'intermediates'],
      capture_intermediates=True,
    ),
    params,
  )
  acts = state['intermediates']['stage2_block1']
  assert acts['conv1']['__call__'][0].shape == (1, 16, 16, 128)
  assert acts['conv2']['__call__'][0].shape == (1, 8, 8, 128)


def test_zero_pad_shortcut_keeps_shape_without_parameters():
  model = create_model('resnet20', num_classes=10)
  params = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
    )
  )['params']
  assert 'proj_conv' not in params['stage2_block1']
  assert params['stage2_block1']['conv1']['kernel'].shape == (3, 3, 16, 32)


def test_conv_init_is_kaiming_normal_fan_out(variables):
  params = variables['resnet_digits']['params']
  kernel = params['stage2_block1']['conv2']['kernel']
  assert kernel.shape == (3, 3, 32, 32)
  expected_std = np.sqrt(2.0 / (3 * 3 * 32))
  np.testing.assert_allclose(np.std(kernel), expected_std, rtol=0.03)
  assert abs(float(np.mean(kernel))) < 0.05 * expected_std
  # Untruncated: a truncated normal would stop at two standard deviations.
  assert np.max(np.abs(kernel)) > 3 * expected_std


def test_unknown_model_names_field_and_allowed():
  with pytest.raises(ConfigError) as info:
    create_model('resnet1000', num_classes=10)
  assert info.value.field == 'model.name'
  message = str(info.value)
  assert message.startswith('config.model.name: ')
  assert "'resnet1000'" in message
  for name in MODELS:
    assert name in message


@pytest.mark.parametrize(
  'kwargs, field',
  [
    ({'width_multiplier': 2}, 'model.width_multiplier'),
    ({'block': 'wide'}, 'model.block'),
    ({'shortcut': 'option_c'}, 'model.shortcut'),
    ({'bn_momentum': 1.5}, 'model.bn_momentum'),
    ({'bn_epsilon': 0.0}, 'model.bn_epsilon'),
    ({'dtype': 'int8'}, 'model.dtype'),
    ({'num_classes': 0}, 'model.num_classes'),
  ],
)
def test_bad_options_raise_config_error(kwargs, field):
  kwargs = {'num_classes': 10, **kwargs}
  with pytest.raises(ConfigError) as info:
    create_model('resnet_tiny', **kwargs)
  assert info.value.field == field
  assert 'allowed' in str(info.value) or 'must' in str(info.value)
