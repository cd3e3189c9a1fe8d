"""Deterministic, indexable batch streams over random-access sources.

The global training batch of step t is a pure function of (data_seed, t):
epoch e = t // steps_per_epoch draws a fresh permutation of the n training
examples from the seed (data_seed, 0, e), step t takes positions
[(t % steps_per_epoch) * B, ... + B) of it (the n % B remainder of each
permutation is never used), and example i in epoch e is augmented with a
generator seeded by (data_seed, 1, e, i). Process p of P builds rows
[p * B / P, (p + 1) * B / P) of that batch only, so a run reads the same data
for any process or device count, and any step can be rebuilt later (`replay`).
Evaluation streams walk a split in stored order, padding the last batch and
marking padding with mask 0. Background reading uses grain's thread pool.
"""

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from sgd_quad.data import augment as augment_lib

Batch = dict[str, np.ndarray]
# uint8 batch [n, H, W, C] -> float32 batch, normalised.
Normalize = Callable[[np.ndarray], np.ndarray]

# Distinct first words of the seeds, so permutations and augmentations draw
# from unrelated streams.
_PERMUTATION_TAG = 0
_AUGMENT_TAG = 1


class Source(Protocol):
  """Random-access examples: a length and a batched read."""

  def __len__(self) -> int: ...

  def read(
    self, indices: np.ndarray
  ) -> tuple[Sequence[np.ndarray], np.ndarray]:
    """Returns (uint8 images, integer labels) of the examples at `indices`."""
    ...


class ArraySource:
  """A split held in memory as arrays (the digits, CIFAR)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    """Wraps arrays.

    Args:
      images: uint8 [n, H, W, C].
      labels: integer [n].
    """
    if len(images) != len(labels):
      raise ValueError(f'{len(images)} images but {len(labels)} labels')
    self.images = images
    self.labels = labels

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns the images and labels at `indices` (fancy indexing)."""
    return self.images[indices], self.labels[indices]


class TfdsSource:
  """A tfds data source (ArrayRecord) read on demand, decoded by tfds."""

  def __init__(self, data_source: Sequence[dict[str, Any]]):
    """Wraps a `tfds.data_source` split.

    Args:
      data_source: examples with 'image' (uint8 [H, W, C]) and 'label'.
    """
    self.data_source = data_source

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Reads and decodes the examples at `indices` in one batched call."""
    records = self.data_source.__getitems__([int(i) for i in indices])
    images = [np.asarray(r['image']) for r in records]
    labels = np.asarray([r['label'] for r in records], dtype=np.int64)
    return images, labels


def to_memory(source: Source, chunk: int = 1024) -> ArraySource:
  """Reads a whole fixed-shape source into memory.

  Args:
    source: any source whose images all have one shape.
    chunk: examples per batched read.

  Returns:
    An `ArraySource` with the same examples in the same order.
  """
  images, labels = [], []
  for start in range(0, len(source), chunk):
    rows = np.arange(start, min(start + chunk, len(source)))
    batch_images, batch_labels = source.read(rows)
    images.append(np.stack(batch_images))
    labels.append(np.asarray(batch_labels))
  return ArraySource(np.concatenate(images), np.concatenate(labels))


def _prefetch(
  fn: Callable[[int], Batch], start: int, stop: int, workers: int, buffer: int
) -> Iterator[Batch]:
  """Yields fn(start), ..., fn(stop - 1) in order, computed ahead by threads."""
  # TODO(sgd_quad): threads share the GIL (PIL decoding and resizing release
  # it, tfds's example parsing does not); ImageNet at accelerator speed will
  # need grain's process-based prefetch, which needs a picklable `fn`.
  if workers <= 0:
    return (fn(i) for i in range(start, stop))
  dataset = grain.MapDataset.range(start, stop).map(fn)
  options = grain.ReadOptions(
    num_threads=workers, prefetch_buffer_size=max(buffer, 1)
  )
  return iter(dataset.to_iter_dataset(options))


def _shard_rows(
  rows: np.ndarray, process_index: int, process_count: int
) -> np.ndarray:
  if len(rows) % process_count:
    raise ValueError(
      f'{len(rows)} rows do not split evenly over {process_count} processes'
    )
  size = len(rows) // process_count
  return rows[process_index * size : (process_index + 1) * size]


class TrainStream:
  """The training batches of a run, one indexable function of the step.

  Attributes:
    num_examples: n, the training examples.
    global_batch_size: B, rows of one step's batch over all processes.
    local_batch_size: B / P, the rows this process builds.
    steps_per_epoch: n // B.
  """

  def __init__(
    self,
    source: Source,
    *,
    global_batch_size: int,
    data_seed: int,
    normalize: Normalize,
    augment: augment_lib.AugmentFn | None = None,
    eval_transform: augment_lib.Transform = augment_lib.identity,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 2,
    prefetch: int = 2,
  ):
    """Sets up the stream; reads nothing yet.

    Args:
      source: the training split.
      global_batch_size: B; must divide by `process_count` and be <= n.
      data_seed: non-negative seed of the order and the augmentations.
      normalize: uint8 batch -> float32 batch.
      augment: per-example augmentation, or None for `eval_transform` only.
      eval_transform: deterministic per-example transform used when `augment`
        is None (it must give every image the input shape).
      process_index: p, this process.
      process_count: P.
      num_workers: background threads of `iterate` (0: build in the caller).
      prefetch: batches `iterate` keeps ready.
    """
    if global_batch_size < 1 or global_batch_size % process_count:
      raise ValueError(
        f'global batch {global_batch_size} must be positive and divide by '
        f'the process count {process_count}'
      )
    if global_batch_size > len(source):
      raise ValueError(
        f'global batch {global_batch_size} exceeds the {len(source)} '
        'training examples'
      )
    if data_seed < 0 or not 0 <= process_index < process_count:
      raise ValueError(
        f'bad data_seed {data_seed} or process {process_index} of '
        f'{process_count}'
      )
    self._source = source
    self._normalize = normalize
    self._augment = augment
    self._eval_transform = eval_transform
    self._seed = int(data_seed)
    self._process_index = process_index
    self._process_count = process_count
    self._num_workers = num_workers
    self._prefetch = prefetch
    self.num_examples = len(source)
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.steps_per_epoch = self.num_examples // global_batch_size
    self._lock = threading.Lock()
    self._permutations: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    """Returns n, the number of training examples."""
    return self.num_examples

  def epoch_permutation(self, epoch: int) -> np.ndarray:
    """Returns the order of the training examples in `epoch`.

    Args:
      epoch: non-negative epoch number.

    Returns:
      int64 [n], a permutation drawn by `default_rng((seed, 0, epoch))`.
    """
    with self._lock:
      perm = self._permutations.get(epoch)
    if perm is None:
      rng = np.random.default_rng([self._seed, _PERMUTATION_TAG, epoch])
      perm = rng.permutation(self.num_examples)
      perm.flags.writeable = False
      with self._lock:
        # Keep the two latest epochs: prefetching straddles a boundary.
        if len(self._permutations) >= 2:
          del self._permutations[min(self._permutations)]
        self._permutations[epoch] = perm
    return perm

  def epoch(self, step: int) -> int:
    """Returns the epoch of a step.

    Args:
      step: non-negative global step.

    Returns:
      step // steps_per_epoch.
    """
    return step // self.steps_per_epoch

  def global_indices(self, step: int) -> np.ndarray:
    """Returns the training-example indices of step `step`'s global batch.

    Args:
      step: non-negative global step.

    Returns:
      int64 [B], in row order; every example appears once per epoch.
    """
    if step < 0:
      raise ValueError(f'step must be non-negative, got {step}')
    offset = (step % self.steps_per_epoch) * self.global_batch_size
    perm = self.epoch_permutation(self.epoch(step))
    return perm[offset : offset + self.global_batch_size]

  def local_indices(self, step: int) -> np.ndarray:
    """Returns the examples this process reads at a step.

    Args:
      step: non-negative global step.

    Returns:
      int64 [B / P]: rows [p * B / P, (p + 1) * B / P) of
      `global_indices(step)`.
    """
    return _shard_rows(
      self.global_indices(step), self._process_index, self._process_count
    )

  def batch_from_indices(
    self, indices: np.ndarray, epoch: int, *, augment: bool = True
  ) -> Batch:
    """Builds this process's rows of a global batch of chosen examples.

    Used for probe batches from held-out index sets; `batch(step)` is
    `batch_from_indices(global_indices(step), epoch(step))`.

    Args:
      indices: global batch of training-example indices; its length must
        divide by the process count. This process builds rows
        [p * len / P, (p + 1) * len / P).
      epoch: epoch whose augmentation draws to use.
      augment: False builds the examples without augmentation.

    Returns:
      {'image': float32 [len / P, H, W, C] normalised, 'label': int32
      [len / P]}.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and not 0 <= indices.min() <= indices.max() < len(self):
      raise IndexError(
        f'example indices must lie in [0, {len(self)}), got '
        f'[{indices.min()}, {indices.max()}]'
      )
    rows = _shard_rows(indices, self._process_index, self._process_count)
    images, labels = self._source.read(rows)
    if augment and self._augment is not None:
      images = [
        self._augment(
          image,
          np.random.default_rng([self._seed, _AUGMENT_TAG, epoch, int(i)]),
        )
        for image, i in zip(images, rows, strict=True)
      ]
    elif self._eval_transform is not augment_lib.identity:
      images = [self._eval_transform(image) for image in images]
    return {
      'image': self._normalize(np.stack(images)),
      'label': np.asarray(labels, dtype=np.int32),
    }

  def batch(self, step: int) -> Batch:
    """Builds this process's rows of the global batch of step `step`.

    Args:
      step: non-negative global step.

    Returns:
      {'image': float32 [B / P, H, W, C] normalised, 'label': int32 [B / P]}.
    """
    return self.batch_from_indices(self.global_indices(step), self.epoch(step))

  def replay(self, step: int) -> Batch:
    """Rebuilds the batch of an earlier (or later) step, for probes.

    Args:
      step: non-negative global step.

    Returns:
      Exactly `batch(step)`.
    """
    return self.batch(step)

  def iterate(self, start_step: int, num_steps: int) -> Iterator[Batch]:
    """Yields batch(start_step), ..., batch(start_step + num_steps - 1).

    Batches are built ahead by `num_workers` background threads (grain) and
    come out in step order.

    Args:
      start_step: first step (the step a resumed run continues from).
      num_steps: how many batches to yield.

    Returns:
      An iterator of batches.
    """
    return _prefetch(
      self.batch,
      start_step,
      start_step + num_steps,
      self._num_workers,
      self._prefetch,
    )


class EvalStream:
  """Evaluation batches over a fixed list of examples, padded and masked.

  Global evaluation batch k holds examples [k * G, (k + 1) * G) of the list,
  with G = P * local_batch_size; process p builds rows
  [p * local_batch_size, (p + 1) * local_batch_size) of it. Rows past the end
  of the list are padding: image 0, label 0, mask 0. Summing mask-weighted
  metrics over all batches and processes counts every example exactly once.

  Attributes:
    num_examples: examples evaluated.
    local_batch_size: rows per batch on this process, a multiple of
      shard_multiple.
    num_batches: batches every process must run (the same on all).
  """

  def __init__(
    self,
    source: Source,
    *,
    batch_size: int,
    image_shape: tuple[int, ...],
    normalize: Normalize,
    indices: np.ndarray | None = None,
    eval_transform: augment_lib.Transform = augment_lib.identity,
    process_index: int = 0,
    process_count: int = 1,
    shard_multiple: int = 1,
    num_workers: int = 2,
    prefetch: int = 2,
  ):
    """Sets up the stream; reads nothing yet.

    Args:
      source: the split to read.
      batch_size: rows per process per batch; lowered to what one batch
        needs when the list is short, then rounded up to a multiple of
        `shard_multiple`.
      image_shape: [H, W, C] after `eval_transform` (for all-padding rows).
      normalize: uint8 batch -> float32 batch.
      indices: rows of `source` to evaluate, in order (None: all).
      eval_transform: deterministic per-example transform.
      process_index: p, this process.
      process_count: P.
      shard_multiple: the local batch must divide by this (local devices).
      num_workers: background threads of iteration (0: build in the caller).
      prefetch: batches kept ready.
    """
    if batch_size < 1 or shard_multiple < 1:
      raise ValueError(
        f'eval batch size {batch_size} and shard multiple {shard_multiple} '
        'must be positive'
      )
    if indices is None:
      indices = np.arange(len(source))
    self._indices = np.asarray(indices, dtype=np.int64)
    self._source = source
    self._normalize = normalize
    self._eval_transform = eval_transform
    self._image_shape = tuple(image_shape)
    self._process_index = process_index
    self._process_count = process_count
    self._num_workers = num_workers
    self._prefetch = prefetch
    self.num_examples = len(self._indices)
    needed = -(-self.num_examples // process_count)
    size = max(1, min(batch_size, needed))
    self.local_batch_size = -(-size // shard_multiple) * shard_multiple
    global_size = self.local_batch_size * process_count
    self.num_batches = -(-self.num_examples // global_size)

  def __len__(self) -> int:
    """Returns num_batches."""
    return self.num_batches

  def batch_indices(self, k: int) -> np.ndarray:
    """Returns the source rows of this process's part of batch `k`.

    Args:
      k: batch number in [0, num_batches).

    Returns:
      int64 [local_batch_size]; -1 marks padding.
    """
    if not 0 <= k < self.num_batches:
      raise IndexError(f'eval batch {k} not in [0, {self.num_batches})')
    start = (k * self._process_count + self._process_index) * (
      self.local_batch_size
    )
    positions = np.arange(start, start + self.local_batch_size)
    valid = positions < self.num_examples
    rows = np.full(self.local_batch_size, -1, dtype=np.int64)
    rows[valid] = self._indices[positions[valid]]
    return rows

  def batch(self, k: int) -> Batch:
    """Builds this process's part of evaluation batch `k`.

    Args:
      k: batch number in [0, num_batches).

    Returns:
      {'image': float32 [b, H, W, C], 'label': int32 [b], 'mask': float32
      [b]} with b = local_batch_size; mask is 1 for real rows, 0 for padding.
    """
    rows = self.batch_indices(k)
    valid = rows >= 0
    image = np.zeros((len(rows), *self._image_shape), np.float32)
    label = np.zeros(len(rows), np.int32)
    if valid.any():
      images, labels = self._source.read(rows[valid])
      if self._eval_transform is not augment_lib.identity:
        images = [self._eval_transform(x) for x in images]
      image[valid] = self._normalize(np.stack(images))
      label[valid] = labels
    return {'image': image, 'label': label, 'mask': valid.astype(np.float32)}

  def __iter__(self) -> Iterator[Batch]:
    """Yields batch(0), ..., batch(num_batches - 1), built ahead by threads."""
    return _prefetch(
      self.batch, 0, self.num_batches, self._num_workers, self._prefetch
    )
