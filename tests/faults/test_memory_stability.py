"""Host memory does not grow with steps: resident memory over the last 20 of 200 tiny steps
is at most 10% above that over steps 20-40 (medians of the trainer's per-step `host/rss_mb`,
measured inside the process). Medians of windows, because single steps carry transients (a
compile, a checkpoint's buffers) that come and go; only growth fails: memory the allocator
gives back is not a leak.

A smaller-than-tiny rollout (8 new tokens) keeps the 200 steps short; the per-step work
(rollout, host text, scoring, update, metrics, TensorBoard, two checkpoints) is the same.
"""

import numpy as np
import pytest

import faults_testlib as fl

pytestmark = pytest.mark.slow


def test_rss_does_not_grow_over_200_steps(tmp_path_factory):
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
  early = float(np.median([rss[s] for s in range(20, 41)]))
  late = float(np.median([rss[s] for s in range(181, 201)]))
  growth = (late - early) / early
  print(f"RSS medians: steps 20-40 {early:.0f} MB, steps 181-200 {late:.0f} MB"
        f" ({100 * growth:+.1f}%); step 20 {rss[20]:.0f}, 100 {rss[100]:.0f}, 200 {rss[200]:.0f}")
  assert growth <= 0.10, (f"RSS grew {100 * growth:.1f}% from steps 20-40 to 181-200:"
                          f" {early:.0f} -> {late:.0f} MB")
