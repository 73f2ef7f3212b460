"""Orbax checkpoints that hold everything a run needs to continue the exact same stream.

One checkpoint step directory holds three items:
  state: the train state pytree (params, optimizer state, step, rng, counters), restored
         straight into the shardings the trainer computed from abstract shapes;
  data:  the data iterator state (Grain's serialised iterator position), as JSON;
  meta:  small JSON facts (step, config hash, wall time) for humans and sanity checks.

Orbax writes into a temporary directory and renames it when the save is complete, so a save
that is killed never looks finished. A newest checkpoint that still fails to restore
(truncated or deleted file) is reported with a warning and the previous one is used; the
unusable one is moved to `<directory>.unusable/` so the recomputed step can be saved again.

Fault-injection hooks (tests only; unset in normal runs, and then Orbax's own temporary-path
class is used unchanged):
  PBRL_DEBUG_CHECKPOINT_DELAY_S=SECONDS  every save sleeps after its data is written and
      before the temporary directory is renamed, so a kill can land mid-save;
  PBRL_DEBUG_CHECKPOINT_FAIL=STEP:ERRNO  the save of STEP raises OSError(ERRNO): ENOSPC
      after the data is written (a disk that fills up mid-save), any other errno name
      (EROFS, EACCES) when the temporary directory is created (an unwritable workdir).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import time
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from pbrl_jax import fileio


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or no usable checkpoint could be restored."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_state: Any
  meta: dict[str, Any]


DEBUG_DELAY_ENV = "PBRL_DEBUG_CHECKPOINT_DELAY_S"
DEBUG_FAIL_ENV = "PBRL_DEBUG_CHECKPOINT_FAIL"


def _debug_failure() -> tuple[int, int] | None:
  """(step, errno) of the PBRL_DEBUG_CHECKPOINT_FAIL hook, or None."""
  value = os.environ.get(DEBUG_FAIL_ENV)
  if not value:
    return None
  step, _, name = value.partition(":")
  code = getattr(errno, name, None)
  if not step.isdigit() or not isinstance(code, int):
    raise ValueError(f"{DEBUG_FAIL_ENV}={value!r}: expected STEP:ERRNO_NAME, e.g. 4:ENOSPC")
  return int(step), code


class _FaultInjectingPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic-rename temporary directory with the fault hooks of the module docstring."""

  def _injected(self, phase: str) -> None:
    failure = _debug_failure()
    if failure is None or self._final_path.name != str(failure[0]):
      return
    at_finalize = failure[1] == errno.ENOSPC
    if (phase == "finalize") == at_finalize:
      raise OSError(failure[1], f"{os.strerror(failure[1])} (injected by {DEBUG_FAIL_ENV})",
                    str(self._tmp_path))

  async def create(self, *args, **kwargs):
    self._injected("create")
    return await super().create(*args, **kwargs)

  async def finalize(self, *args, **kwargs):
    await asyncio.sleep(float(os.environ.get(DEBUG_DELAY_ENV) or 0.0))
    self._injected("finalize")
    return await super().finalize(*args, **kwargs)


def make_manager(directory: str, *, max_to_keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` with items 'state', 'data' and 'meta'."""
  hooked = os.environ.get(DEBUG_DELAY_ENV) or _debug_failure() is not None
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      temporary_path_class=_FaultInjectingPath if hooked else None)
  return ocp.CheckpointManager(fileio.absolute(directory), options=options,  # Orbax: absolute
                               item_names=("state", "data", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any,
         meta: dict[str, Any]) -> None:
  """Starts a (possibly asynchronous) save of one step.

  Raises:
    CheckpointError: the workdir is not writable or the disk is full; the previous
      checkpoints are untouched because Orbax only renames a finished temporary directory.
      An asynchronous write that failed in the background surfaces here, at the next save
      (its temporary directory, named in the message, says which step it was).
  """
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": data_state}),
        meta=ocp.args.JsonSave(meta)), force=True)
  except OSError as e:
    raise CheckpointError(
        f"step {step}: writing a checkpoint in {manager.directory} failed: {e}. The"
        f" checkpoints already on disk are intact: {sorted(manager.all_steps())}.") from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until pending asynchronous saves are on disk; surfaces their errors."""
  try:
    manager.wait_until_finished()
  except OSError as e:
    raise CheckpointError(
        f"writing a checkpoint in {manager.directory} failed: {e}. The checkpoints already"
        f" on disk are intact: {sorted(manager.all_steps())}.") from e


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
      if _not_damage(e):
        # Rolling back to an older step would silently throw away training: the checkpoint
        # is probably fine and the environment is not. Nothing is moved.
        raise CheckpointError(
            f"restoring checkpoint {step} in {manager.directory} failed for a reason that"
            f" does not mean the checkpoint is damaged ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}); fix it and resume. The"
            f" checkpoints on disk were left as they are: {sorted(steps)}.") from e
      # A truncated array file or a deleted item surfaces as many different exception
      # types inside Orbax and TensorStore; any of them means this step is unusable.
      logging.warning("checkpoint %d in %s is unusable (%s: %s); trying an older one",
                      step, manager.directory, type(e).__name__, str(e).splitlines()[0][:300])
      errors.append(f"step {step}: {type(e).__name__}: {e}")
      continue
    if errors:
      aside = _set_aside(manager, [s for s in steps if s > step])
      logging.warning("resumed from checkpoint %d after skipping %d unusable newer one(s);"
                      " moved them to %s so that the recomputed steps can be saved again",
                      step, len(errors), aside)
    return Restored(step=step, state=out["state"], data_state=out["data"]["iterator"],
                    meta=dict(out["meta"]))
  if steps:
    raise CheckpointError(
        f"no usable checkpoint in {manager.directory}; tried steps {steps}:\n"
        + "\n".join(errors))
  return None


# Messages of errors that come from the machine, not the files (TensorStore and XLA wrap
# them in their own exception types).
_ENVIRONMENT_MARKERS = ("PERMISSION_DENIED", "Permission denied", "RESOURCE_EXHAUSTED",
                        "Out of memory", "out of memory", "UNAUTHENTICATED")


def _not_damage(error: BaseException) -> bool:
  """Whether a restore error says nothing about the checkpoint's own files."""
  for e in (error, error.__cause__, error.__context__):
    if isinstance(e, (PermissionError, MemoryError)):
      return True
    if e is not None and any(m in str(e) for m in _ENVIRONMENT_MARKERS):
      return True
  return False


def _set_aside(manager: ocp.CheckpointManager, steps: Sequence[int]) -> str:
  """Moves unusable step directories out of the manager's way (kept for inspection).

  Left in place, an unusable step would block the resumed run from saving that step again
  (Orbax refuses to overwrite a step). Moved rather than deleted: a checkpoint that failed to
  restore because of a transient read error is still there to recover by hand.
  """
  root = epath.Path(manager.directory)
  target = root.parent / f"{root.name}.unusable"
  if jax.process_index() == 0:
    fileio.makedirs(str(target))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for step in steps:
      fileio.move_tree(str(root / str(step)), str(target / f"{step}-{stamp}"))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("pbrl_jax.checkpoint.set_aside")
  manager.reload()
  return str(target)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying the given shardings (restore targets)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ---------------------------------------------------------------------------------------------
# Reading a finished run's policy (pbrl-eval, exports, warm starts).
# ---------------------------------------------------------------------------------------------


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps with a finished checkpoint in DIR/checkpoints (Orbax's step directories)."""
  directory = os.path.join(workdir, "checkpoints")
  if not fileio.isdir(directory):
    return []
  return sorted(int(d) for d in fileio.listdir(directory)
                if d.isdigit() and fileio.isdir(os.path.join(directory, d, "state")))


def restore_params(workdir: str, step: int, abstract_params: Any, item: str = "policy",
                   shardings: Any = None) -> Any:
  """Restores only `state.params[item]` of one trainer checkpoint.

  Args:
    workdir: run directory holding checkpoints/<step>/state.
    step: the checkpoint step.
    abstract_params: pytree of jax.ShapeDtypeStruct: the restored arrays take these shapes
      and dtypes.
    item: 'policy' (full fine-tuning) or 'lora' (the adapters of a LoRA run).
    shardings: a pytree of shardings like `abstract_params`: each array is read straight
      into its sharding (each device reads its own shard); None: the default device.

  Returns:
    The restored parameter pytree.
  """
  path = fileio.absolute(os.path.join(workdir, "checkpoints", str(step), "state"))
  if not fileio.isdir(path):
    raise FileNotFoundError(f"{path}: no 'state' item of checkpoint {step}")
  if shardings is None:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: one, abstract_params)
  target = {"params": {item: abstract_params}}
  restore_args = {"params": {item: jax.tree.map(
      lambda x, sh: ocp.ArrayRestoreArgs(dtype=x.dtype, sharding=sh, global_shape=x.shape),
      abstract_params, shardings)}}
  with ocp.PyTreeCheckpointer() as ckptr:
    out = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  return out["params"][item]


def restore_policy(bundle: Any, workdir: str, step: int, model: Any, mesh: Any = None) -> None:
  """Replaces `bundle.params` (the run's base model) with the policy of checkpoint `step`.

  A LoRA run (`model.lora_rank` > 0) checkpoints its adapters only: they are restored and
  merged into the base. A full fine-tuning run's params replace the base's, in its dtypes;
  the base weights are released before the checkpoint's arrive.

  Args:
    bundle: a `ModelBundle` holding the run's base model.
    workdir: run directory.
    step: the checkpoint step.
    model: the run config's `model` section.
    mesh: with a mesh, every array is read straight into the trainer's sharding of it
      (`sharding.DEFAULT_RULES`); without, onto the default device.
  """
  from pbrl_jax.models import decoder  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models import lora as lora_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models import sharding as shd  # pylint: disable=g-import-not-at-top
  rank = int(model.get("lora_rank", 0) or 0)
  if rank:
    targets = tuple(model.lora_targets)
    shapes = lora_lib.lora_shapes(bundle.config, targets, rank)
    shardings = None if mesh is None else shd.param_shardings(
        lora_lib.lora_logical_axes(bundle.config, targets, rank), shapes, mesh)
    adapters = restore_params(workdir, step, shapes, "lora", shardings)
    bundle.params = lora_lib.apply_lora(bundle.params, adapters, float(model.lora_alpha), rank)
    logging.info("restored the LoRA adapters of checkpoint %d (merged)", step)
    return
  shapes = decoder.param_shapes(bundle.config)
  abstract = jax.tree.map(lambda a, p: jax.ShapeDtypeStruct(a.shape, p.dtype), shapes,
                          bundle.params)
  shardings = None if mesh is None else shd.param_shardings(
      decoder.param_logical_axes(bundle.config), shapes, mesh)
  bundle.params = None  # free the base weights before the checkpoint's arrive
  bundle.params = restore_params(workdir, step, abstract, shardings=shardings)
  logging.info("restored the policy of checkpoint %d", step)
