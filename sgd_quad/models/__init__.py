"""Model registry: names in configs map to ResNet architectures.

`MODELS` maps each name that `config.model.name` may hold to a constructor
with the architecture bound; `create_model` looks a name up, applies the
class count, compute dtype and overrides, and raises `ConfigError` naming the
field on anything it does not know. `param_count` counts trainable parameters
from shapes alone, so even ResNet-50 is counted without initialising it.
"""

import dataclasses
import functools
import math
import numbers
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgd_quad.errors import ConfigError
from sgd_quad.models.resnet import (
  BLOCKS,
  SHORTCUTS,
  STEMS,
  BasicBlock,
  BottleneckBlock,
  ResNet,
)

__all__ = [
  'MODELS',
  'BasicBlock',
  'BottleneckBlock',
  'ResNet',
  'create_model',
  'param_count',
]

MODELS: Mapping[str, Callable[..., nn.Module]] = types.MappingProxyType(
  {
    # For tests: two stages of one basic block, 8 and 16 channels.
    'resnet_tiny': functools.partial(
      ResNet, stage_sizes=(1, 1), stage_widths=(8, 16), stem_width=8
    ),
    # For the 8x8x1 digits: 16 channels at 8x8, then 32 at 4x4. A third
    # stage (64 at 2x2) doubles the step time without helping accuracy.
    'resnet_digits': functools.partial(
      ResNet, stage_sizes=(1, 1), stage_widths=(16, 32), stem_width=16
    ),
    # He et al. 2016, sec. 4.2: 6n + 2 layers with n = 3, option A shortcuts.
    'resnet20': functools.partial(
      ResNet,
      stage_sizes=(3, 3, 3),
      stage_widths=(16, 32, 64),
      stem_width=16,
      shortcut='zero_pad',
    ),
    # The common CIFAR ResNet-18: ImageNet widths, 3x3 stem, no max-pool.
    'resnet18_cifar': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)),
    'resnet18': functools.partial(
      ResNet, stage_sizes=(2, 2, 2, 2), stem='imagenet'
    ),
    'resnet34': functools.partial(
      ResNet, stage_sizes=(3, 4, 6, 3), stem='imagenet'
    ),
    'resnet50': functools.partial(
      ResNet, stage_sizes=(3, 4, 6, 3), block='bottleneck', stem='imagenet'
    ),
  }
)

# Fields a config may override; num_classes and dtype have their own arguments.
_OVERRIDABLE = tuple(
  f.name
  for f in dataclasses.fields(ResNet)
  if f.name not in ('num_classes', 'dtype', 'parent', 'name')
)
_DTYPES = ('float32', 'bfloat16', 'float16')


def create_model(
  name: str, *, num_classes: int, dtype: Any = jnp.float32, **overrides: Any
) -> nn.Module:
  """Builds a registered model.

  Args:
    name: a key of `MODELS`.
    num_classes: number of logits.
    dtype: compute dtype (a dtype or its name: float32, bfloat16, float16);
      parameters stay float32.
    **overrides: `ResNet` attributes to change, for example
      `bn_momentum=0.99` or `zero_init_residual=True`.

  Returns:
    An unbound Flax module; call it as `model.apply(variables, images, train)`.

  Raises:
    ConfigError: for an unknown name, option or option value.
  """
  if name not in MODELS:
    raise ConfigError(
      'model.name', f'unknown model {name!r}; allowed: {", ".join(MODELS)}'
    )
  if (
    isinstance(num_classes, bool)
    or not isinstance(num_classes, numbers.Integral)
    or num_classes < 1
  ):
    raise ConfigError(
      'model.num_classes', f'must be a positive int, got {num_classes!r}'
    )
  dtype = _canonical_dtype(dtype)
  for key, value in overrides.items():
    _check_override(key, value)
  return MODELS[name](num_classes=int(num_classes), dtype=dtype, **overrides)


def param_count(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Counts the entries of the `params` collection without computing them.

  BatchNorm scales and biases are counted, its running statistics are not.

  Args:
    model: an unbound model taking `(images, train)`.
    input_shape: NHWC shape of an input batch, for example (1, 32, 32, 3).

  Returns:
    The number of trainable parameters.
  """
  images = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  init = functools.partial(model.init, train=False)
  shapes = jax.eval_shape(init, jax.random.key(0), images)
  leaves = jax.tree.leaves(shapes['params'])
  return sum(math.prod(leaf.shape) for leaf in leaves)


def _canonical_dtype(dtype: Any) -> jnp.dtype:
  """Returns the dtype `dtype` names, or raises ConfigError."""
  try:
    canonical = jnp.dtype(dtype)
  except TypeError:
    canonical = None
  if canonical is None or canonical.name not in _DTYPES:
    raise ConfigError(
      'model.dtype', f'unknown dtype {dtype!r}; allowed: {", ".join(_DTYPES)}'
    )
  return canonical


def _check_override(key: str, value: Any) -> None:
  """Raises ConfigError unless `key=value` is a valid ResNet option."""
  field = f'model.{key}'
  if key not in _OVERRIDABLE:
    raise ConfigError(
      field, f'unknown model option; allowed: {", ".join(_OVERRIDABLE)}'
    )
  choices = {'block': tuple(BLOCKS), 'stem': STEMS, 'shortcut': SHORTCUTS}
  if key in choices and value not in choices[key]:
    raise ConfigError(
      field, f'unknown {key} {value!r}; allowed: {", ".join(choices[key])}'
    )
  if key in ('bn_momentum', 'bn_epsilon') and (
    isinstance(value, bool) or not isinstance(value, int | float)
  ):
    raise ConfigError(field, f'must be a number, got {value!r}')
  if key == 'bn_momentum' and not 0.0 <= value <= 1.0:
    raise ConfigError(field, f'must lie in [0, 1], got {value}')
  if key == 'bn_epsilon' and not value > 0.0:
    raise ConfigError(field, f'must be positive, got {value}')
