"""Checkpoint faults on a small state: corrupt or half-written newest checkpoint, full disk,
unwritable checkpoint directory.

The trainer's resume path is `checkpoint.restore_latest`; these tests drive it directly on a
small sharded pytree (seconds), and `test_resume_faults.py` drives the same cases through the
CLI.
"""

import glob
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pbrl_jax import checkpoint as ckpt_lib


def _state(step: int):
  return {"w": jnp.full((8, 4), float(step)), "b": jnp.arange(4, dtype=jnp.int32) + step,
          "step": jnp.asarray(step, jnp.int32)}


def _abstract():
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return ckpt_lib.abstract_with_shardings(jax.eval_shape(lambda: _state(0)),
                                          jax.tree.map(lambda _: sh, _state(0)))


def _save_steps(directory: str, steps, async_save: bool = True):
  manager = ckpt_lib.make_manager(directory, max_to_keep=5, async_save=async_save)
  for s in steps:
    ckpt_lib.save(manager, s, _state(s), f'{{"pos": {s}}}', {"step": s})
  ckpt_lib.wait(manager)
  manager.close()


def _restore(directory: str):
  manager = ckpt_lib.make_manager(directory, max_to_keep=5)
  try:
    return ckpt_lib.restore_latest(manager, _abstract())
  finally:
    manager.close()


def _assert_is_step(restored, step: int):
  assert restored is not None and restored.step == step
  np.testing.assert_array_equal(np.asarray(restored.state["w"]), np.full((8, 4), float(step)))
  np.testing.assert_array_equal(np.asarray(restored.state["b"]), np.arange(4) + step)
  assert restored.data_state == f'{{"pos": {step}}}' and restored.meta == {"step": step}


def _largest_array_file(step_dir: str) -> str:
  # Orbax's OCDBT layout: the root manifest `state/manifest.ocdbt` points at the data files
  # in `state/d/` (the per-process `ocdbt.process_0/` tree is merged into them at commit).
  files = glob.glob(os.path.join(step_dir, "state", "d", "*"))
  assert files, f"no array data files in {step_dir}/state/d"
  return max(files, key=os.path.getsize)


def _truncate_array_file(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return os.path.relpath(path, step_dir)


def _delete_array_file(step_dir):
  path = _largest_array_file(step_dir)
  os.remove(path)
  return os.path.relpath(path, step_dir)


def _delete_data_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, "data"))
  return "data"


def _garble_meta(step_dir):
  path = glob.glob(os.path.join(step_dir, "meta", "*"))[0]
  with open(path, "w") as f:
    f.write('{"step": ')  # cut mid-write
  return os.path.relpath(path, step_dir)


def _truncate_state_metadata(step_dir):
  path = os.path.join(step_dir, "state", "_METADATA")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return "state/_METADATA"


def _delete_root_manifest(step_dir):
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
  return "state/manifest.ocdbt"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Steps 1, 2, 3 written once (asynchronously, like the trainer); each test copies them."""
  d = str(tmp_path_factory.mktemp("ckpts") / "checkpoints")
  _save_steps(d, [1, 2, 3])
  assert sorted(os.listdir(d)) == ["1", "2", "3"]
  return d


@pytest.mark.parametrize("corrupt", [_truncate_array_file, _delete_array_file,
                                     _delete_data_item, _garble_meta, _truncate_state_metadata,
                                     _delete_root_manifest])
def test_corrupt_newest_falls_back_with_warning(saved, tmp_path, caplog, corrupt):
  d = str(tmp_path / "checkpoints")
  shutil.copytree(saved, d)
  _assert_is_step(_restore(d), 3)  # the copy is good before the damage
  what = corrupt(os.path.join(d, "3"))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    restored = _restore(d)
  _assert_is_step(restored, 2)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  unusable = [w for w in warnings if "checkpoint 3" in w and "unusable" in w]
  assert unusable, (what, warnings)
  # The warning says what was wrong: the exception type and its first line.
  assert any("Error" in w or "error" in w for w in unusable), (what, unusable)
  assert any("resumed from checkpoint 2 after skipping 1" in w for w in warnings), warnings
  # The unusable step is moved aside (kept for inspection), so the resumed run can save
  # step 3 again; Orbax refuses to overwrite an existing step.
  assert not os.path.exists(os.path.join(d, "3"))
  assert len(glob.glob(d + ".unusable/3-*")) == 1
  _save_steps(d, [3])
  _assert_is_step(_restore(d), 3)


def test_half_written_newest_is_ignored(saved, tmp_path):
  # A save killed before its rename leaves only Orbax's temporary directory: never a step.
  d = str(tmp_path / "checkpoints")
  shutil.copytree(saved, d)
  os.rename(os.path.join(d, "3"), os.path.join(d, "3.orbax-checkpoint-tmp"))
  _truncate_array_file(os.path.join(d, "3.orbax-checkpoint-tmp"))
  _assert_is_step(_restore(d), 2)
  # The resumed run recomputes step 3 and saves it again over the leftover.
  _save_steps(d, [3])
  _assert_is_step(_restore(d), 3)


def test_every_checkpoint_corrupt_is_an_error_naming_steps(saved, tmp_path):
  d = str(tmp_path / "checkpoints")
  shutil.copytree(saved, d)
  for s in ("1", "2", "3"):
    _delete_array_file(os.path.join(d, s))
  with pytest.raises(ckpt_lib.CheckpointError, match=r"no usable checkpoint .*\[3, 2, 1\]"):
    _restore(d)


@pytest.mark.parametrize("async_save", [True, False])
@pytest.mark.parametrize("fault,fail_step,expect", [
    ("ENOSPC", 3, "No space left on device"),  # the disk fills up while step 3 is written
    ("EROFS", 3, "Read-only file system"),  # the directory became unwritable
    ("ENOSPC", 2, "No space left on device"),  # a middle save: surfaces at the next save
])
def test_write_failure_is_clear_and_keeps_previous(tmp_path, monkeypatch, async_save, fault,
                                                   fail_step, expect):
  d = str(tmp_path / "checkpoints")
  monkeypatch.setenv(ckpt_lib.DEBUG_FAIL_ENV, f"{fail_step}:{fault}")
  manager = ckpt_lib.make_manager(d, max_to_keep=5, async_save=async_save)
  with pytest.raises(ckpt_lib.CheckpointError) as info:
    for s in (1, 2, 3):
      ckpt_lib.save(manager, s, _state(s), f'{{"pos": {s}}}', {"step": s})
    ckpt_lib.wait(manager)
  message = str(info.value)
  assert expect in message and "intact" in message, message
  # The message names the failed step's directory (async errors surface one save later).
  assert f"{fail_step}.orbax-checkpoint-tmp" in message, message
  manager.close()
  monkeypatch.delenv(ckpt_lib.DEBUG_FAIL_ENV)
  _assert_is_step(_restore(d), fail_step - 1)


def test_bad_fault_hook_value_is_rejected(tmp_path, monkeypatch):
  monkeypatch.setenv(ckpt_lib.DEBUG_FAIL_ENV, "three:ENOSPC")
  with pytest.raises(ValueError, match="STEP:ERRNO_NAME"):
    ckpt_lib.make_manager(str(tmp_path / "c"))


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "state/d/x"),
                                   MemoryError("cannot allocate"),
                                   RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating")])
def test_an_environment_error_is_raised_not_a_rollback(saved, tmp_path, monkeypatch, error):
  """Only a damaged checkpoint falls back; a permission or memory error stops with the step."""
  d = str(tmp_path / "checkpoints")
  shutil.copytree(saved, d)
  calls = []

  def failing_restore(self, step, *args, **kwargs):
    calls.append(step)
    raise error

  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_restore)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoint 3 .*does not mean"):
    _restore(d)
  assert calls == [3]  # no older step was tried
  monkeypatch.undo()
  assert sorted(os.listdir(d)) == ["1", "2", "3"] and not glob.glob(d + ".unusable/*")
  _assert_is_step(_restore(d), 3)
