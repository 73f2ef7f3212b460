"""Non-finite gradients injected through the trainer's `debug_nonfinite_at_step` hook.

One poisoned update is skipped and counted and the run goes on; `max_nonfinite_in_row`
poisoned updates in a row stop the run with a message naming the step, and the checkpoints
on disk hold the last good parameters.
"""

import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import faults_testlib as fl

pytestmark = pytest.mark.slow
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return fl.shared_base(tmp_path_factory)


def _run(base, name, *flags):
  workdir = fl.workdir_with_pivot(base, name)
  run = fl.Run(workdir, ("--config.checkpoint_every=2", "--config.sample_every=0") + flags,
               fl.fault_env(base["cache"]), "run")
  rc = run.wait(RUN_TIMEOUT)
  return workdir, rc, run.output()


def test_one_poisoned_update_is_skipped_and_counted(base):
  # Update index 1 is the second trainer step.
  workdir, rc, out = _run(base, "poison_once", "--config.total_steps=3",
                          "--config.debug_nonfinite_at_step=1",
                          "--config.max_nonfinite_in_row=2")
  assert rc == 0, out[-4000:]
  rows = fl.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert [r["skipped"] for r in rows] == [0.0, 1.0, 0.0]
  assert [r["nonfinite_total"] for r in rows] == [0.0, 1.0, 1.0]
  assert [r["nonfinite_consecutive"] for r in rows] == [0.0, 1.0, 0.0]
  assert math.isnan(rows[1]["grad_norm"]) and rows[1]["update_norm"] == 0.0
  # The skipped update left the parameters as they were; the next one moved them again.
  assert rows[1]["param_norm"] == rows[0]["param_norm"]
  assert rows[2]["param_norm"] != rows[1]["param_norm"]
  assert all(math.isfinite(r["loss"]) for r in rows)


def _restore_state(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def test_poison_in_a_row_stops_with_step_and_keeps_good_checkpoint(base):
  # Updates 2, 3, 4 (trainer steps 3, 4, 5) are poisoned; the third in a row stops the run.
  workdir, rc, out = _run(base, "poison_streak", "--config.total_steps=6",
                          "--config.debug_nonfinite_at_step=2",
                          "--config.debug_nonfinite_count=3",
                          "--config.max_nonfinite_in_row=3")
  assert rc != 0, out[-4000:]
  assert "FloatingPointError: step 5: 3 updates in a row had a non-finite" in out, out[-4000:]
  rows = fl.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert [r["skipped"] for r in rows] == [0.0, 0.0, 1.0, 1.0, 1.0]
  assert [r["nonfinite_consecutive"] for r in rows] == [0.0, 0.0, 1.0, 2.0, 3.0]
  # Step 5's state is not saved; checkpoint 2 is from before the poison and checkpoint 4
  # (after two skipped updates) holds the same parameters.
  assert fl.finalized_steps(workdir) == [2, 4]
  good, after = _restore_state(workdir, 2), _restore_state(workdir, 4)
  for a, b in zip(jax.tree.leaves(good["params"]), jax.tree.leaves(after["params"])):
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
  assert int(after["nonfinite_total"]) == 2 and int(good["nonfinite_total"]) == 0
  norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(p, np.float64)))
                           for p in jax.tree.leaves(good["params"]["policy"]))))
  assert norm == pytest.approx(rows[1]["param_norm"], rel=1e-5)
  # A restart without the poison resumes from the last checkpoint and finishes.
  run = fl.Run(workdir, ("--config.checkpoint_every=2", "--config.sample_every=0",
                         "--config.total_steps=6"), fl.fault_env(base["cache"]), "resume")
  rc = run.wait(RUN_TIMEOUT)
  out = run.output()
  assert rc == 0, out[-4000:]
  assert fl.resumed_from(out) == 4
  rows = fl.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert [r["skipped"] for r in rows[4:]] == [0.0, 0.0]
