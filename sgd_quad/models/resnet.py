"""Residual networks with BatchNorm in Flax Linen.

One `ResNet` module covers every architecture sgd_quad trains: the stem (a
3x3 convolution for small images, or the 7x7 convolution and max-pool of the
ImageNet nets), the residual block (the two-convolution basic block, or the
v1.5 bottleneck that strides in its 3x3 convolution) and the shortcut used when
a block changes shape (a 1x1 convolution with BatchNorm, or the parameter-free
"option A" of He et al. 2016 that subsamples and zero-pads the channels) are
attributes. Convolutions carry no bias because BatchNorm follows each of them,
their kernels start from He (Kaiming) normal noise scaled by fan-out, and the
parameters are float32 whatever the compute dtype. Calls take NHWC images and
return float32 logits.
"""

import types
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
ModuleDef = Callable[..., nn.Module]

# He et al. 2015: zero-mean normal with variance 2 / fan_out, not truncated.
kaiming_normal_fan_out = nn.initializers.variance_scaling(
  2.0, 'fan_out', 'normal'
)

STEMS = ('cifar', 'imagenet')
SHORTCUTS = ('projection', 'zero_pad')


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with BatchNorm, added to the shortcut.

  Attributes:
    features: output channels of the block.
    strides: stride of the first convolution (1 or 2).
    shortcut: 'projection' or 'zero_pad', used when the shape changes.
    conv: convolution constructor (dtype and initialiser bound).
    norm: BatchNorm constructor (train mode and statistics options bound).
    zero_init_residual: start the last BatchNorm scale of the branch at zero.
  """

  features: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef
  zero_init_residual: bool = False

  expansion = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the block.

    Args:
      x: activations [B, H, W, C_in].

    Returns:
      Activations [B, H / strides, W / strides, features].
    """
    y = self.conv(self.features, (3, 3), self.strides, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), 1, name='conv2')(y)
    y = _last_norm(self.norm, self.zero_init_residual, 'bn2')(y)
    residual = _shortcut(
      x, self.features, self.strides, self.shortcut, self.conv, self.norm
    )
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """1x1, 3x3 and 1x1 convolutions with BatchNorm (ResNet v1.5).

  The stride sits in the 3x3 convolution, as in torchvision's ResNet-50, rather
  than in the first 1x1 convolution of the original v1 net.

  Attributes:
    features: channels of the inner 3x3 convolution; the block outputs
      `4 * features` channels.
    strides: stride of the 3x3 convolution (1 or 2).
    shortcut: 'projection' or 'zero_pad', used when the shape changes.
    conv: convolution constructor (dtype and initialiser bound).
    norm: BatchNorm constructor (train mode and statistics options bound).
    zero_init_residual: start the last BatchNorm scale of the branch at zero.
  """

  features: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef
  zero_init_residual: bool = False

  expansion = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the block.

    Args:
      x: activations [B, H, W, C_in].

    Returns:
      Activations [B, H / strides, W / strides, 4 * features].
    """
    out_features = self.features * self.expansion
    y = self.conv(self.features, (1, 1), 1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), self.strides, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(out_features, (1, 1), 1, name='conv3')(y)
    y = _last_norm(self.norm, self.zero_init_residual, 'bn3')(y)
    residual = _shortcut(
      x, out_features, self.strides, self.shortcut, self.conv, self.norm
    )
    return nn.relu(y + residual)


BLOCKS = types.MappingProxyType(
  {'basic': BasicBlock, 'bottleneck': BottleneckBlock}
)


def _last_norm(norm: ModuleDef, zero_init: bool, name: str) -> nn.Module:
  """The BatchNorm that closes a residual branch, optionally zero-scaled."""
  if zero_init:
    return norm(scale_init=nn.initializers.zeros, name=name)
  return norm(name=name)


def _shortcut(
  x: Array,
  features: int,
  strides: int,
  kind: str,
  conv: ModuleDef,
  norm: ModuleDef,
) -> Array:
  """The identity, or a map to the block's output shape when it changes.

  Must be called from inside a compact method, which owns the projection's
  submodules.
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  if kind == 'projection':
    x = conv(features, (1, 1), strides, name='proj_conv')(x)
    return norm(name='proj_bn')(x)
  if kind == 'zero_pad':
    # Option A: keep every other pixel, then append zero channels.
    x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
      raise ValueError(
        f'zero_pad shortcut cannot shrink {x.shape[-1]} to {features} channels'
      )
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  raise ValueError(
    f'unknown shortcut {kind!r}; allowed: {", ".join(SHORTCUTS)}'
  )


class ResNet(nn.Module):
  """A residual network with BatchNorm, from stem to logits.

  Stage i holds `stage_sizes[i]` blocks of width `stage_widths[i]`; every stage
  after the first halves the resolution in its first block. Global average
  pooling and one dense layer give the logits.

  Attributes:
    num_classes: number of logits.
    stage_sizes: blocks per stage.
    stage_widths: block width per stage (inner width for bottlenecks).
    stem_width: channels of the stem convolution.
    block: 'basic' or 'bottleneck' (see `BLOCKS`).
    stem: 'cifar' (3x3 convolution, stride 1) or 'imagenet' (7x7 convolution,
      stride 2, then 3x3 max-pool, stride 2).
    shortcut: 'projection' (1x1 convolution and BatchNorm) or 'zero_pad'
      (option A, no parameters) where a block changes shape.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
    bn_momentum: running statistics update as
      `stat <- bn_momentum * stat + (1 - bn_momentum) * batch_stat`, so 0.0
      makes them the statistics of the last batch.
    bn_epsilon: added to the variance in every BatchNorm.
    zero_init_residual: start the scale of each branch's last BatchNorm at zero,
      so every block begins as the identity (Goyal et al. 2017).
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  block: str = 'basic'
  stem: str = 'cifar'
  shortcut: str = 'projection'
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, images: Array, train: bool) -> Array:
    """Computes logits.

    With `train=True` BatchNorm normalises with the batch's statistics and
    updates the running ones, so apply with `mutable=['batch_stats']`; with
    `train=False` it uses the running statistics and changes nothing.

    Args:
      images: float images [B, H, W, C] (NHWC), cast to `dtype` here.
      train: whether BatchNorm uses batch statistics.

    Returns:
      float32 logits [B, num_classes].
    """
    if self.block not in BLOCKS:
      raise ValueError(
        f'unknown block {self.block!r}; allowed: {", ".join(BLOCKS)}'
      )
    if self.stem not in STEMS:
      raise ValueError(
        f'unknown stem {self.stem!r}; allowed: {", ".join(STEMS)}'
      )
    if len(self.stage_sizes) != len(self.stage_widths):
      raise ValueError('stage_sizes and stage_widths differ in length')
    block_cls = BLOCKS[self.block]

    def conv(features, kernel_size, strides, name):
      # Symmetric padding k // 2, as torchvision pads; 'SAME' would pad
      # strided convolutions on the bottom-right only.
      return nn.Conv(
        features,
        kernel_size,
        strides=(strides, strides),
        padding=tuple((k // 2, k // 2) for k in kernel_size),
        use_bias=False,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_normal_fan_out,
        name=name,
      )

    def norm(name, scale_init=nn.initializers.ones):
      return nn.BatchNorm(
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        scale_init=scale_init,
        name=name,
      )

    x = jnp.asarray(images, self.dtype)
    if self.stem == 'imagenet':
      x = conv(self.stem_width, (7, 7), 2, name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(self.stem_width, (3, 3), 1, name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))

    for i, (size, width) in enumerate(
      zip(self.stage_sizes, self.stage_widths, strict=True)
    ):
      for j in range(size):
        x = block_cls(
          features=width,
          strides=2 if i > 0 and j == 0 else 1,
          shortcut=self.shortcut,
          conv=conv,
          norm=norm,
          zero_init_residual=self.zero_init_residual,
          name=f'stage{i + 1}_block{j + 1}',
        )(x)

    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(
      self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name='head'
    )(x)
    return jnp.asarray(x, jnp.float32)
