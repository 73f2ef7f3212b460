"""Orbax checkpoints that hold everything a run needs to continue the exact same stream.

One checkpoint step directory holds three items:
  state: the train state pytree (params, optimizer state, step, rng, counters), restored
         straight into the shardings the trainer computed from abstract shapes;
  data:  the data iterator state (Grain's serialised iterator position), as JSON;
  meta:  small JSON facts (step, config hash, wall time) for humans and sanity checks.

Orbax writes into a temporary directory and renames it when the save is complete, so a save
that is killed never looks finished. A newest checkpoint that still fails to restore
(truncated or deleted file) is reported with a warning and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or no usable checkpoint could be restored."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_state: Any
  meta: dict[str, Any]


def make_manager(directory: str, *, max_to_keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` with items 'state', 'data' and 'meta'."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "data", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any,
         meta: dict[str, Any]) -> None:
  """Starts a (possibly asynchronous) save of one step.

  Raises:
    CheckpointError: the workdir is not writable or the disk is full; the previous
      checkpoints are untouched because Orbax only renames a finished temporary directory.
  """
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": data_state}),
        meta=ocp.args.JsonSave(meta)), force=True)
  except OSError as e:
    raise CheckpointError(
        f"saving checkpoint {step} in {manager.directory} failed: {e}. The previous"
        " checkpoints are intact.") from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until pending asynchronous saves are on disk; surfaces their errors."""
  try:
    manager.wait_until_finished()
  except OSError as e:
    raise CheckpointError(
        f"writing a checkpoint in {manager.directory} failed: {e}. The previous"
        " checkpoints are intact.") from e


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> Restored | None:
  """Restores the newest checkpoint that restores cleanly, or None if there is none.

  Args:
    manager: from `make_manager`.
    abstract_state: pytree of jax.ShapeDtypeStruct with `.sharding` set, so arrays are
      restored directly into their shardings.

  Returns:
    The restored step, state, data iterator state and meta, or None for a fresh run.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  errors = []
  for step in steps:
    try:
      out = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
      jax.block_until_ready(out["state"])
    except Exception as e:  # pylint: disable=broad-except
      # A truncated array file or a deleted item surfaces as many different exception
      # types inside Orbax and TensorStore; any of them means this step is unusable.
      logging.warning("checkpoint %d in %s is unusable (%s: %s); trying an older one",
                      step, manager.directory, type(e).__name__, str(e).splitlines()[0][:300])
      errors.append(f"step {step}: {type(e).__name__}: {e}")
      continue
    if errors:
      logging.warning("resumed from checkpoint %d after skipping %d unusable newer one(s)",
                      step, len(errors))
    return Restored(step=step, state=out["state"], data_state=out["data"]["iterator"],
                    meta=dict(out["meta"]))
  if steps:
    raise CheckpointError(
        f"no usable checkpoint in {manager.directory}; tried steps {steps}:\n"
        + "\n".join(errors))
  return None


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying the given shardings (restore targets)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
