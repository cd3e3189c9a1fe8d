"""Tests of the ResNet models and their registry.

Parameter counts are checked exactly against the published architectures from
shapes alone (`jax.eval_shape`), so no large net is ever initialised; the
behaviour checks (dtypes, BatchNorm statistics, initialisation) run on the
small nets.
"""

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

RESNET_DIGITS = (
  (9 * 1 * 16 + 2 * 16)
  + _basic_block(16, 16, False)
  + _basic_block(16, 32, True)
  + _basic_block(32, 64, True)
  + (64 * 10 + 10)
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


def _images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _init(model, shape):
  return model.init(jax.random.key(0), _images(shape), train=False)


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


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_imagenet_logit_shape_from_shapes(name):
  model = create_model(name, num_classes=1000)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), images
  )
  logits = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), variables, images
  )
  assert logits.shape == (2, 1000)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('name', SMALL)
def test_bfloat16_compute_float32_params_and_logits(name):
  model = create_model(name, num_classes=10, dtype='bfloat16')
  variables = _init(model, (4, 8, 8, 1))
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32

  logits, state = model.apply(
    variables,
    _images((4, 8, 8, 1)),
    train=True,
    mutable=['batch_stats', 'intermediates'],
    capture_intermediates=True,
  )
  assert logits.shape == (4, 10)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  (stem_out,) = state['intermediates']['stem_conv']['__call__']
  assert stem_out.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(state['batch_stats']):
    assert leaf.dtype == jnp.float32


def test_resnet20_forward_on_cifar_shapes():
  model = create_model('resnet20', num_classes=100)
  variables = _init(model, (2, 32, 32, 3))
  logits = model.apply(variables, _images((2, 32, 32, 3)), train=False)
  assert logits.shape == (2, 100)
  assert logits.dtype == jnp.float32


def test_train_updates_batch_stats_and_eval_does_not():
  model = create_model('resnet_tiny', num_classes=10)
  variables = _init(model, (8, 8, 8, 1))
  images = _images((8, 8, 8, 1), seed=1) + 3.0

  _, state = model.apply(variables, images, train=True, mutable=['batch_stats'])
  old = jax.tree.leaves(variables['batch_stats'])
  new = jax.tree.leaves(state['batch_stats'])
  assert len(old) == len(new) > 0
  assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))

  # Without `mutable` any write to batch_stats would raise.
  eval_logits = model.apply(variables, images, train=False)
  _, state = model.apply(
    variables, images, train=False, mutable=['batch_stats']
  )
  jax.tree.map(
    np.testing.assert_array_equal,
    state['batch_stats'],
    variables['batch_stats'],
  )
  train_logits, _ = model.apply(
    variables, images, train=True, mutable=['batch_stats']
  )
  assert not np.allclose(eval_logits, train_logits)


def _bn_inputs_and_stats(model, variables, images):
  """Pairs each BatchNorm's new running stats with its input's batch stats."""
  _, state = model.apply(
    variables,
    images,
    train=True,
    mutable=['batch_stats', 'intermediates'],
    capture_intermediates=True,
  )
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

  visit(state['batch_stats'], state['intermediates'], '')
  return pairs


def test_zero_momentum_makes_running_stats_the_batch_stats():
  model = create_model('resnet_tiny', num_classes=10)
  variables = _init(model, (16, 8, 8, 1))
  images = _images((16, 8, 8, 1), seed=2) * 2.0 + 1.0

  pairs = _bn_inputs_and_stats(model.clone(bn_momentum=0.0), variables, images)
  assert len(pairs) == 6
  for path, stats, x in pairs:
    np.testing.assert_allclose(
      stats['mean'], x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6, err_msg=path
    )
    np.testing.assert_allclose(
      stats['var'], x.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6, err_msg=path
    )

  # Default momentum 0.9 from zero means: 0.9 * 0 + 0.1 * batch mean.
  for path, stats, x in _bn_inputs_and_stats(model, variables, images):
    np.testing.assert_allclose(
      stats['mean'], 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-7
    )


def test_bn_options_reach_every_batchnorm():
  model = create_model(
    'resnet_tiny', num_classes=10, bn_momentum=0.5, bn_epsilon=1e-3
  )
  bound = model.bind(_init(model, (2, 8, 8, 1)))
  found = []

  def visit(module):
    for child in module._state.children.values():
      if isinstance(child, nn.BatchNorm):
        found.append((child.momentum, child.epsilon))
      elif isinstance(child, nn.Module):
        visit(child)

  # Children are only registered once the bound module has run.
  bound(_images((2, 8, 8, 1)), train=False)
  visit(bound)
  assert found and set(found) == {(0.5, 1e-3)}


def test_zero_init_residual():
  model = create_model('resnet_digits', num_classes=10, zero_init_residual=True)
  params = _init(model, (2, 8, 8, 1))['params']
  for name, block in params.items():
    if not name.startswith('stage'):
      continue
    np.testing.assert_array_equal(block['bn2']['scale'], 0.0)
    np.testing.assert_array_equal(block['bn1']['scale'], 1.0)
    if 'proj_bn' in block:
      np.testing.assert_array_equal(block['proj_bn']['scale'], 1.0)

  default = _init(create_model('resnet_digits', num_classes=10), (2, 8, 8, 1))
  np.testing.assert_array_equal(
    default['params']['stage1_block1']['bn2']['scale'], 1.0
  )


def test_bottleneck_zero_init_targets_bn3():
  model = create_model('resnet50', num_classes=10, zero_init_residual=True)
  variables = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False
    )
  )
  block = variables['params']['stage2_block1']
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
  # v1.5: the stride sits in the 3x3 convolution.
  assert block['conv2']['kernel'].shape == (3, 3, 128, 128)


def test_conv_init_is_kaiming_normal_fan_out():
  params = _init(create_model('resnet_digits', num_classes=10), (2, 8, 8, 1))
  kernel = params['params']['stage3_block1']['conv2']['kernel']
  assert kernel.shape == (3, 3, 64, 64)
  expected_std = np.sqrt(2.0 / (3 * 3 * 64))
  np.testing.assert_allclose(np.std(kernel), expected_std, rtol=0.03)
  assert abs(float(np.mean(kernel))) < 0.05 * expected_std
  # Untruncated: some draws lie beyond two standard deviations.
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
