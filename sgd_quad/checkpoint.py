"""Orbax checkpoints of the train state, verified by checksums.

A checkpoint holds the whole `TrainState` (raw parameters, BatchNorm
statistics, optimizer state and every averager's state) under the item
`state`, and a small JSON item `meta` (step, config hash). Checkpoints live in
`<workdir>/checkpoints/<step>`; orbax writes each one to a temporary directory
and renames it when complete, so a kill during a save leaves the previous
checkpoints intact.

Orbax does not notice a flipped byte, so after each save the SHA-256 of every
file of the checkpoint goes to `<workdir>/checkpoints/<step>.sha256.json`; a
checkpoint counts as committed only once that file exists. `latest_good_step`
verifies checkpoints newest first and skips, with a warning, any that is
truncated, altered or missing files.
"""

import contextlib
import hashlib
import json
import logging as std_logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

PyTree = Any


def absolute(path: str) -> epath.Path:
  """`path` made absolute when local (orbax refuses relative paths)."""
  if '://' in str(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(path))


def manager(
  workdir: str, *, keep: int, owner: bool = False
) -> ocp.CheckpointManager:
  """The checkpoint manager of a workdir, keeping the last `keep` steps.

  Args:
    workdir: the run's directory.
    keep: checkpoints kept; older ones are deleted after each save.
    owner: True only for the run that holds the workdir's lock. The owner
      deletes the temporary directories that a killed save left behind; any
      other reader might delete a save in progress.

  Returns:
    An orbax manager of `<workdir>/checkpoints`.
  """
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=True,
    enable_async_checkpointing=False,
    cleanup_tmp_directories=owner,
  )
  return ocp.CheckpointManager(
    absolute(workdir) / 'checkpoints',
    options=options,
    item_names=('state', 'meta'),
  )


# Status codes that tensorstore puts before the message of a failed read or
# write (orbax passes them on as ValueError).
_STORAGE_ERRORS = (
  'OUT_OF_RANGE',
  'RESOURCE_EXHAUSTED',
  'PERMISSION_DENIED',
  'FAILED_PRECONDITION',
  'UNAVAILABLE',
  'DATA_LOSS',
  'ABORTED',
)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict):
  """Saves `state` and `meta` at `step` and waits until it is committed.

  Raises:
    OSError: when storage fails (full disk, file-size limit); the partial
      save has no checksum file, so it never counts as committed.
  """
  try:
    mngr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
      ),
      force=True,
    )
    mngr.wait_until_finished()
  except ValueError as e:
    if not str(e).startswith(_STORAGE_ERRORS):
      raise
    # Tensorstore nests the OS's reason last: '...: File too large [...]'.
    reason = str(e).splitlines()[0].rsplit(': ', 1)[-1]
    raise OSError(f'saving checkpoint {step}: {reason}') from e
  if jax.process_index() == 0:
    _write_checksums(mngr.directory, step)
    _remove_stale_checksums(mngr)


def _checksum_file(directory: epath.Path, step: int) -> epath.Path:
  return epath.Path(directory) / f'{step}.sha256.json'


def _digests(step_dir: epath.Path) -> dict[str, str]:
  """SHA-256 of every file below `step_dir`, by relative path."""
  digests, pending = {}, [step_dir]
  while pending:  # epath has no recursive glob on object stores
    for path in pending.pop().iterdir():
      if path.is_dir():
        pending.append(path)
      else:
        rel = path.as_posix()[len(step_dir.as_posix()) + 1 :]
        digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
  return dict(sorted(digests.items()))


def _write_checksums(directory: epath.Path, step: int):
  digests = _digests(epath.Path(directory) / str(step))
  final = _checksum_file(directory, step)
  tmp = final.parent / f'.{final.name}.tmp'
  tmp.write_text(json.dumps(digests, indent=1))
  tmp.replace(final)


def _remove_stale_checksums(mngr: ocp.CheckpointManager):
  kept = {str(s) for s in mngr.all_steps()}
  for path in epath.Path(mngr.directory).glob('*.sha256.json'):
    if path.name.split('.')[0] not in kept:
      path.unlink()


def verify(directory: epath.Path, step: int) -> str | None:
  """Checks a checkpoint against its checksums.

  Returns:
    None when every file is present and unchanged, otherwise what is wrong.
  """
  sums = _checksum_file(directory, step)
  if not sums.exists():
    return 'it has no checksum file (the save did not complete)'
  expected = json.loads(sums.read_text())
  actual = _digests(epath.Path(directory) / str(step))
  for rel, digest in expected.items():
    if rel not in actual:
      return f'file {rel} is missing'
    if actual[rel] != digest:
      return f'file {rel} does not match its checksum'
  return None


def latest_committed_step(mngr: ocp.CheckpointManager) -> int | None:
  """The newest checkpoint with a checksum file, without verifying it."""
  steps = mngr.all_steps()
  committed = [s for s in steps if _checksum_file(mngr.directory, s).exists()]
  return max(committed, default=None)


def latest_good_step(mngr: ocp.CheckpointManager) -> int | None:
  """The newest checkpoint that passes `verify`, warning about bad ones."""
  for step in sorted(mngr.all_steps(), reverse=True):
    problem = verify(mngr.directory, step)
    if problem is None:
      return step
    logging.warning(
      'Skipping checkpoint %s/%d: %s.', mngr.directory, step, problem
    )
  return None


def abstract(tree: PyTree) -> PyTree:
  """Shapes, dtypes and shardings of `tree`, as restore targets."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
  )


def restore(
  mngr: ocp.CheckpointManager, step: int, target: PyTree
) -> tuple[PyTree, dict]:
  """Restores the state at `step` onto the shardings of `target`.

  Args:
    mngr: the workdir's manager.
    step: a saved step.
    target: a tree of arrays or `ShapeDtypeStruct`s with the state's layout.

  Returns:
    The restored state and the checkpoint's meta record.
  """
  restored = mngr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract(target)),
      meta=ocp.args.JsonRestore(),
    ),
  )
  return restored['state'], restored['meta']


def restore_fields(
  mngr: ocp.CheckpointManager, step: int, target: dict[str, PyTree]
) -> dict[str, PyTree]:
  """Restores only some fields of a saved state (used to branch a run).

  Args:
    mngr: the manager of the run to read from.
    step: a saved step.
    target: field name -> tree of `ShapeDtypeStruct`s (with shardings) for
      the fields wanted, e.g. {'params': ..., 'batch_stats': ...}.

  Returns:
    field name -> restored tree.
  """
  restored = mngr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      )
    ),
  )
  return restored['state']


class QuietOrbax(std_logging.Filter):
  """Drops orbax's INFO records, whose per-save chatter hides our lines.

  For the handler of a command-line tool: `absl.logging.get_absl_handler()
  .addFilter(QuietOrbax())`.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if '/orbax/' not in record.pathname:
      return True
    # A failed save logs a traceback from each of orbax's threads; the one
    # line of each error says enough.
    record.exc_info = record.exc_text = None
    return record.levelno > std_logging.INFO


class _DropMissingMetadata(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return 'Metadata file does not exist' not in record.getMessage()


@contextlib.contextmanager
def _without_item_metadata_warning():
  """Silences orbax's warning that an item directory has no step metadata.

  Reading one item of a step directly, as `load_subtree` does, is sound (the
  step's metadata sits one level up), but orbax warns about it every time.
  """
  quiet = _DropMissingMetadata()
  logger = std_logging.getLogger('absl')
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def load_subtree(
  workdir: str,
  path: tuple[str, ...],
  *,
  step: int | None = None,
  template: PyTree | None = None,
) -> PyTree:
  """Reads one subtree of a saved state, e.g. ('averages', 'ema_0.999').

  Only the arrays of that subtree are read, onto the default device; no
  model, optimizer or data is needed.

  Args:
    workdir: the run's directory.
    path: keys from the state's root to the subtree.
    step: a saved step; None for the newest good one.
    template: optional tree of `ShapeDtypeStruct`s (or arrays) to restore
      into, for example a NamedTuple averager state; by default the subtree
      comes back as nested dicts.

  Returns:
    The subtree's arrays.
  """
  mngr = manager(workdir, keep=2)
  saved = sorted(mngr.all_steps())
  step = latest_good_step(mngr) if step is None else step
  mngr.close()
  if step is None:
    raise FileNotFoundError(f'no good checkpoint in {workdir}/checkpoints')
  if step not in saved:
    raise FileNotFoundError(
      f'step {step} is not saved in {workdir}/checkpoints; saved: {saved}'
    )
  item_dir = absolute(workdir) / 'checkpoints' / str(step) / 'state'
  ckptr = ocp.PyTreeCheckpointer()
  with _without_item_metadata_warning():
    tree = ckptr.metadata(item_dir).item_metadata.tree
  for key in path:
    tree = tree[key]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  leaves = template if template is not None else tree
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), leaves
  )
  for key in reversed(path):
    target = {key: target}
  with _without_item_metadata_warning():
    restored = ckptr.restore(
      item_dir,
      args=ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      ),
    )
  for key in path:
    restored = restored[key]
  return restored
