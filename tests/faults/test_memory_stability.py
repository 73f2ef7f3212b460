"""Host memory does not grow with steps: resident memory after 200 tiny steps is within 10%
of that after 20 (the trainer logs `host/rss_mb` every step, measured inside the process).

A smaller-than-tiny rollout (8 new tokens) keeps the 200 steps short; the per-step work
(rollout, host text, scoring, update, metrics, TensorBoard, two checkpoints) is the same.
"""

import pytest

import faults_testlib as fl

pytestmark = pytest.mark.slow


def test_rss_after_200_steps_within_10_percent_of_20(tmp_path_factory):
  base = fl.shared_base(tmp_path_factory)
  workdir = fl.workdir_with_pivot(base, "memory")
  run = fl.Run(workdir, ("--config.total_steps=200", "--config.checkpoint_every=100",
                         "--config.sample_every=0", "--config.rollout.max_new_tokens=8"),
               fl.fault_env(base["cache"]), "run")
  rc = run.wait(900)
  assert rc == 0, run.output()[-4000:]
  rows = fl.read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, 201))
  rss = {r["step"]: r["host/rss_mb"] for r in rows}
  growth = (rss[200] - rss[20]) / rss[20]
  print(f"RSS: step 20 {rss[20]:.0f} MB, step 100 {rss[100]:.0f} MB, step 200 {rss[200]:.0f} MB"
        f" ({100 * growth:+.1f}%)")
  assert abs(growth) <= 0.10, f"RSS grew {100 * growth:.1f}% from step 20 to 200: {rss[20]:.0f}"\
      f" -> {rss[200]:.0f} MB"
