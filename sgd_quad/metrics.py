"""One writer for every scalar a run produces: JSON lines plus TensorBoard.

`metrics.jsonl` in the workdir is the record of a run: one line per step and
kind (`{"step": 100, "kind": "train", "train/loss": ...}`), flushed and synced
before the checkpoint of that step is committed, so a crash never loses a line
that a checkpoint relies on. On resume `truncate_after` drops lines past the
restored step, which makes the file of a killed-and-resumed run equal to that
of an uninterrupted one (timing fields aside). TensorBoard events go through
tensorboardX, which needs no TensorFlow; they may repeat steps after a resume.

Only process 0 writes; the other processes get a writer that discards.
"""

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

METRICS_FILE = 'metrics.jsonl'

# Fields that measure wall-clock time; they differ between otherwise identical
# runs and are excluded when runs are compared.
TIMING_FIELDS = ('steps_per_sec', 'eta_sec', 'wall_sec')


def _plain(value):
  """Turns numpy scalars into JSON numbers (non-finite values as strings)."""
  if isinstance(value, (np.ndarray, np.generic)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricWriter:
  """Appends scalar records to `metrics.jsonl` and TensorBoard event files.

  Attributes:
    workdir: the run's directory.
  """

  def __init__(
    self,
    workdir: str,
    *,
    enabled: bool = True,
    object_store: bool | None = None,
  ):
    """Opens the writer; writes nothing yet.

    Args:
      workdir: the run's directory.
      enabled: False on processes other than 0: every call does nothing.
      object_store: whether the workdir lives on a store without appends
        (`gs://`); None decides by the path. True on a local path runs the
        object-store code (used by the tests).
    """
    self.workdir = epath.Path(workdir)
    self._enabled = enabled
    if object_store is None:
      object_store = not _is_local(self.workdir)
    self._local = not object_store
    self._lines = []
    self._tb = None
    if enabled:
      # Imported here so that processes other than 0 never touch TensorBoard.
      import tensorboardX

      self._tb = tensorboardX.SummaryWriter(
        os.fspath(self.workdir / 'tensorboard'), flush_secs=30
      )

  def write(self, step: int, kind: str, scalars: Mapping[str, float]):
    """Queues one record; `flush` makes it durable.

    Args:
      step: the global step the scalars belong to.
      kind: the record's kind, e.g. 'train', 'eval', 'probe'.
      scalars: name -> value; names are written as given.
    """
    if not self._enabled:
      return
    record = {'step': int(step), 'kind': kind}
    record.update({k: _plain(v) for k, v in scalars.items()})
    self._lines.append(json.dumps(record, sort_keys=False))
    for name, value in scalars.items():
      value = _plain(value)
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(name, value, int(step))

  def flush(self):
    """Appends queued lines to the metrics file and syncs them to storage.

    On a local disk the lines are appended and fsync'ed. Object stores
    (`gs://`) have no append, so there the file is rewritten through a
    temporary copy that replaces it in one rename.
    """
    if not self._enabled or not self._lines:
      return
    text = ''.join(line + '\n' for line in self._lines)
    path = self.workdir / METRICS_FILE
    if self._local:
      with open(path, 'a') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    else:
      old = path.read_text() if path.exists() else ''
      _atomic_write(path, old + text, local=False)
    self._lines = []
    self._tb.flush()

  def truncate_after(self, step: int, *, redo: Sequence[str] = ()):
    """Drops every line with a step past `step` (used on resume).

    Args:
      step: the step the run resumes from.
      redo: kinds whose line at `step` itself is written after that step's
        checkpoint (a probe of theta_step), so the resumed run writes it
        again; those lines are dropped too.
    """
    if not self._enabled:
      return
    path = self.workdir / METRICS_FILE
    if not path.exists():
      return
    kept = [
      r
      for r in read_metrics(self.workdir)
      if r['step'] < step or (r['step'] == step and r['kind'] not in redo)
    ]
    _atomic_write(
      path, ''.join(json.dumps(r) + '\n' for r in kept), local=self._local
    )

  def discard(self):
    """Drops the queued lines (after a failed write, before closing)."""
    self._lines = []

  def close(self):
    self.flush()
    if self._tb is not None:
      self._tb.close()


def _is_local(path: epath.Path) -> bool:
  return '://' not in os.fspath(path)


def _atomic_write(path: epath.Path, text: str, *, local: bool):
  """Writes `text` to a temporary sibling, syncs it and renames it over."""
  tmp = path.parent / f'.{path.name}.tmp'
  if not local:
    tmp.write_text(text)
  else:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  tmp.replace(path)


def read_metrics(workdir: str, kind: str | None = None) -> list[dict]:
  """Reads the records of a run, optionally only those of one kind.

  Args:
    workdir: the run's directory.
    kind: if given, keep only records of this kind ('train', 'eval', ...).

  Returns:
    The records in file order.
  """
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  # A last line without its newline was cut short by a full disk; it was
  # never synced before a checkpoint, so it is dropped.
  lines = path.read_text().split('\n')[:-1]
  records = [json.loads(line) for line in lines if line]
  return [r for r in records if kind is None or r['kind'] == kind]
