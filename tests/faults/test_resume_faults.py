"""Preemption faults through the real CLI: SIGKILL at seeded random steps (one of them in the
middle of an asynchronous checkpoint write), a corrupted newest checkpoint, and a disk that
fills up while a checkpoint is written. After each, a plain restart must reproduce the metrics
of an uninterrupted run with the same seed exactly (every key except wall times and memory).

Tiny config, 6 steps, a checkpoint every 2 steps: a kill loses the steps since the last
finished checkpoint, and the restarted run recomputes them identically.
"""

import os
import random
import shutil

import pytest

import faults_testlib as fl

pytestmark = pytest.mark.slow

# The shared reference run's settings (train_testlib.reference_run): 6 steps, a checkpoint
# every 2.
STEPS = fl.tl.REFERENCE_STEPS
FLAGS = fl.tl.REFERENCE_FLAGS
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return fl.shared_base(tmp_path_factory)


def _workdir(base, name):
  return fl.workdir_with_pivot(base, name)


def _run_to_end(base, workdir, tag, **env):
  run = fl.Run(workdir, FLAGS, fl.fault_env(base["cache"], **env), tag)
  rc = run.wait(RUN_TIMEOUT)
  return rc, run.output()


@pytest.fixture(scope="module")
def reference():
  """The uninterrupted run every faulty run is compared with (shared with the end-to-end
  tests; the corrupt-checkpoint test damages a copy)."""
  workdir = fl.tl.reference_run()
  rows = fl.read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert fl.finalized_steps(workdir) == [2, 4, 6]
  assert all(isinstance(r["host/rss_mb"], float) and r["host/rss_mb"] > 0 for r in rows)
  return {"workdir": workdir, "rows": fl.comparable(rows)}


def _launch_and_kill(base, workdir, tag, predicate, what, **env):
  """Starts a run, SIGKILLs it once `predicate()` holds for this launch; returns its output.

  Lines of metrics.jsonl left by the previous (killed) launch must not trigger the kill: the
  predicate only counts once this launch has rewritten the file (resume truncates it with an
  atomic replace, a new inode) or created it.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  before = os.stat(path).st_ino if os.path.exists(path) else None
  fresh = lambda: os.path.exists(path) and os.stat(path).st_ino != before
  run = fl.Run(workdir, FLAGS, fl.fault_env(base["cache"], **env), tag)
  run.wait_until(lambda: fresh() and predicate(), RUN_TIMEOUT, what)
  run.kill()
  return run.output()


def test_sigkill_at_random_steps_then_resume_is_exact(base, reference):
  """Three SIGKILLs at seeded random steps and one inside a checkpoint write, in one run."""
  workdir = _workdir(base, "killed")
  logged = lambda: max(fl.metric_steps(workdir), default=0)
  trials = []
  for k in sorted(random.Random(8).sample(range(1, STEPS), 3)):
    start = max(fl.finalized_steps(workdir), default=0)
    target = max(k, start + 1)  # a step this launch computes itself
    out = _launch_and_kill(base, workdir, f"kill{k}", lambda: logged() >= target,
                           f"step {target}")
    if start:
      assert fl.resumed_from(out) == start, out[-3000:]
    steps = fl.metric_steps(workdir)
    # metrics.jsonl reads as one run: lines past the restored step were dropped on resume.
    assert steps == list(range(1, len(steps) + 1)), steps
    trials.append({"kill_after": k, "resumed_from": start, "last_logged": steps[-1],
                   "checkpoints": fl.finalized_steps(workdir)})

  # A kill while Orbax writes: every save sleeps before its rename; kill while one is pending.
  start = max(fl.finalized_steps(workdir), default=0)
  save_step = start + 2
  assert save_step <= STEPS, f"no checkpoint left to interrupt after step {start}"
  pending = lambda: any(int(d.split(".")[0]) >= save_step for d in fl.temporary_dirs(workdir))
  _launch_and_kill(base, workdir, "kill_mid_save",
                   lambda: logged() >= save_step and pending(),
                   f"the checkpoint write of step {save_step}",
                   PBRL_DEBUG_CHECKPOINT_DELAY_S="120")
  assert save_step not in fl.finalized_steps(workdir), fl.temporary_dirs(workdir)
  trials.append({"kill": "mid-save", "half_written": fl.temporary_dirs(workdir),
                 "checkpoints": fl.finalized_steps(workdir)})

  last_good = max(fl.finalized_steps(workdir), default=0)
  rc, out = _run_to_end(base, workdir, "final")
  assert rc == 0, out[-4000:]
  if last_good:
    assert fl.resumed_from(out) == last_good, out[-3000:]
  assert fl.comparable(fl.read_metrics(workdir)) == reference["rows"], trials
  assert fl.finalized_steps(workdir) == [2, 4, 6]
  print("SIGKILL trials:", trials, "leftover temporary dirs:", fl.temporary_dirs(workdir))


def test_corrupt_newest_checkpoint_falls_back_and_stays_exact(base, reference):
  workdir = str(base["root"] / "corrupt")
  shutil.copytree(reference["workdir"], workdir)
  victim = fl.largest_array_file(os.path.join(workdir, "checkpoints", "6"))
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  rc, out = _run_to_end(base, workdir, "resume")
  assert rc == 0, out[-4000:]
  assert "checkpoint 6 in" in out and "is unusable" in out, out[-4000:]
  assert "resumed from checkpoint 4 after skipping 1 unusable" in out, out[-4000:]
  assert fl.resumed_from(out) == 4
  # Steps 5 and 6 are recomputed bit for bit; the bad checkpoint 6 is replaced by a good one.
  assert fl.comparable(fl.read_metrics(workdir)) == reference["rows"]
  assert fl.finalized_steps(workdir) == [2, 4, 6]
  assert os.listdir(os.path.join(workdir, "checkpoints.unusable"))[0].startswith("6-")


def test_disk_full_during_checkpoint_is_clear_and_keeps_previous(base, reference):
  workdir = _workdir(base, "disk_full")
  rc, out = _run_to_end(base, workdir, "enospc", PBRL_DEBUG_CHECKPOINT_FAIL="4:ENOSPC")
  assert rc != 0, out[-4000:]
  assert "CheckpointError" in out and "No space left on device" in out, out[-4000:]
  assert "4.orbax-checkpoint-tmp" in out, out[-4000:]  # names the step that failed
  assert fl.finalized_steps(workdir) == [2]
  rc, out = _run_to_end(base, workdir, "resume")
  assert rc == 0, out[-4000:]
  assert fl.resumed_from(out) == 2
  assert fl.comparable(fl.read_metrics(workdir)) == reference["rows"]
