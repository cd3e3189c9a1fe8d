"""Per-example image augmentations in numpy, and the registry that names them.

Every augmentation maps one uint8 image [H, W, C] and a numpy `Generator` to a
uint8 image of the dataset's input shape; the stream seeds the generator from
(data_seed, example index, epoch), so an augmented batch can be rebuilt at any
time. `AUGMENTATIONS` maps config names to factories; 'default' resolves per
dataset (digits: none, CIFAR: crop_flip, ImageNet: inception_crop). Resizing
uses PIL (bilinear, antialiased when shrinking).
"""

import math
from collections.abc import Callable

import ml_collections
import numpy as np
from PIL import Image

from sgd_quad import errors

# image -> image, deterministic (the evaluation transform of a dataset).
Transform = Callable[[np.ndarray], np.ndarray]
# (image, rng) -> image, random.
AugmentFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# (input shape, evaluation transform, data config) -> augmentation; None means
# "no randomness", so the stream skips seeding a generator per example.
AugmentFactory = Callable[
  [tuple[int, int, int], Transform, ml_collections.ConfigDict],
  AugmentFn | None,
]

CIFAR_PADDING = 4
INCEPTION_SCALE = (0.08, 1.0)
INCEPTION_RATIO = (3 / 4, 4 / 3)
# ImageNet evaluation: resize the shorter side to 256, center crop 224.
CENTER_CROP_FRACTION = 224 / 256


def identity(image: np.ndarray) -> np.ndarray:
  """Returns `image` unchanged (the evaluation transform of fixed-size data).

  Args:
    image: any array.

  Returns:
    The same array.
  """
  return image


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes a uint8 image with PIL's bilinear filter.

  Args:
    image: uint8 [H, W, C] with C in {1, 3}.
    height: output height.
    width: output width.

  Returns:
    uint8 [height, width, C].
  """
  if image.shape[:2] == (height, width):
    return image
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
  return out[..., None] if squeeze else out


def shift(
  image: np.ndarray, rng: np.random.Generator, max_shift: int
) -> np.ndarray:
  """Translates an image by a random integer offset, filling with zeros.

  Args:
    image: [H, W, C].
    rng: source of the offsets dy, dx, each uniform on [-max_shift, max_shift].
    max_shift: largest offset in pixels along each axis.

  Returns:
    The shifted image, same shape and dtype; pixels moved in from outside the
    frame are 0.
  """
  dy, dx = (int(d) for d in rng.integers(-max_shift, max_shift + 1, size=2))
  h, w = image.shape[:2]
  out = np.zeros_like(image)
  out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
    max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
  ]
  return out


def crop_flip(
  image: np.ndarray, rng: np.random.Generator, padding: int = CIFAR_PADDING
) -> np.ndarray:
  """Pads with zeros, crops back to size at a random offset, flips half.

  The standard CIFAR augmentation of He et al. (2016): zero padding (as in
  their recipe and torchvision's `RandomCrop(32, padding=4)`), not reflection.

  Args:
    image: [H, W, C].
    rng: source of the crop offset and the flip.
    padding: pixels of zeros added on each side before cropping.

  Returns:
    An [H, W, C] crop of the padded image, mirrored left-right with
    probability 1/2.
  """
  h, w = image.shape[:2]
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  y, x = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2))
  out = padded[y : y + h, x : x + w]
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def inception_crop(
  image: np.ndarray,
  rng: np.random.Generator,
  size: int,
  scale: tuple[float, float] = INCEPTION_SCALE,
  ratio: tuple[float, float] = INCEPTION_RATIO,
) -> np.ndarray:
  """Random-resized crop (Szegedy et al., 2015) and a random left-right flip.

  Draws a crop of area fraction s ~ U(scale) and aspect ratio r with
  log r ~ U(log ratio) until it fits (10 tries; then the largest central crop
  with a ratio inside `ratio`), resizes it to size x size, flips with
  probability 1/2.

  Args:
    image: uint8 [H, W, C] of any size.
    rng: source of the crop and the flip.
    size: output height and width.
    scale: range of the crop's area as a fraction of the image's.
    ratio: range of the crop's width / height.

  Returns:
    uint8 [size, size, C].
  """
  h, w = image.shape[:2]
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    area = h * w * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(area * aspect)))
    ch = int(round(math.sqrt(area / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      y = int(rng.integers(0, h - ch + 1))
      x = int(rng.integers(0, w - cw + 1))
      break
  else:
    cw, ch = w, h
    if w / h < ratio[0]:
      ch = int(round(w / ratio[0]))
    elif w / h > ratio[1]:
      cw = int(round(h * ratio[1]))
    y, x = (h - ch) // 2, (w - cw) // 2

  out = resize(image[y : y + ch, x : x + cw], size, size)
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """ImageNet evaluation transform: shorter side to size / 0.875, center crop.

  Args:
    image: uint8 [H, W, C] of any size.
    size: output height and width (224 gives the usual resize to 256).

  Returns:
    uint8 [size, size, C].
  """
  h, w = image.shape[:2]
  short = int(round(size / CENTER_CROP_FRACTION))
  factor = short / min(h, w)
  nh = max(size, int(round(h * factor)))
  nw = max(size, int(round(w * factor)))
  out = resize(image, nh, nw)
  y, x = (nh - size) // 2, (nw - size) // 2
  return np.ascontiguousarray(out[y : y + size, x : x + size])


def _make_none(image_shape, eval_transform, data_cfg) -> AugmentFn | None:
  del image_shape, eval_transform, data_cfg
  return None


def _make_shift(image_shape, eval_transform, data_cfg) -> AugmentFn:
  del image_shape
  max_shift = int(data_cfg.shift_pixels)
  return lambda image, rng: shift(eval_transform(image), rng, max_shift)


def _make_crop_flip(image_shape, eval_transform, data_cfg) -> AugmentFn:
  del image_shape, data_cfg
  return lambda image, rng: crop_flip(eval_transform(image), rng)


def _make_inception_crop(image_shape, eval_transform, data_cfg) -> AugmentFn:
  del eval_transform, data_cfg
  height, width = image_shape[:2]
  if height != width:
    raise ValueError(f'inception_crop needs a square input, got {image_shape}')
  return lambda image, rng: inception_crop(image, rng, height)


AUGMENTATIONS: dict[str, AugmentFactory] = {
  'none': _make_none,
  'shift': _make_shift,
  'crop_flip': _make_crop_flip,
  'inception_crop': _make_inception_crop,
}


def allowed_names() -> str:
  """Returns the accepted values of `data.augment`, comma-separated.

  Returns:
    'default' followed by the registry's names, sorted.
  """
  return ', '.join(['default', *sorted(AUGMENTATIONS)])


def get_augmentation(
  name: str,
  image_shape: tuple[int, int, int],
  eval_transform: Transform,
  data_cfg: ml_collections.ConfigDict,
) -> AugmentFn | None:
  """Builds the named augmentation for one dataset.

  Args:
    name: a key of `AUGMENTATIONS` ('default' must be resolved by the caller).
    image_shape: the dataset's input shape [H, W, C] after preprocessing.
    eval_transform: the dataset's deterministic transform (applied first by the
      augmentations that keep the input size).
    data_cfg: the data config block (reads `shift_pixels`).

  Returns:
    A function (uint8 image, rng) -> uint8 image of `image_shape`, or None for
    'none'.

  Raises:
    ConfigError: on an unknown name (field 'data.augment').
  """
  if name not in AUGMENTATIONS:
    raise errors.ConfigError(
      'data.augment',
      f'unknown augmentation {name!r}; allowed: {allowed_names()}',
    )
  return AUGMENTATIONS[name](image_shape, eval_transform, data_cfg)
