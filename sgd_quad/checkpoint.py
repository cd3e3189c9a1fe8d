"""Orbax checkpoints of the train state, and loading pieces of them.

A checkpoint holds the whole `TrainState` (raw parameters, BatchNorm
statistics, optimizer state and every averager's state) under the item
`state`, and a small JSON item `meta` (step, config hash). Checkpoints live in
`<workdir>/checkpoints/<step>`; orbax writes each one to a temporary directory
and renames it when complete, so a kill during a save leaves the previous
checkpoints intact.
"""

from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any


def manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
  """The checkpoint manager of a workdir, keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(
    epath.Path(workdir) / 'checkpoints',
    options=options,
    item_names=('state', 'meta'),
  )


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict):
  """Saves `state` and `meta` at `step` and waits until it is committed."""
  mngr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
    ),
    force=True,
  )
  mngr.wait_until_finished()


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
