"""Host memory does not grow with steps: the trend of resident memory over steps 20-80 of a
tiny run, projected over 200 steps, is at most 10% of its level (the trainer's per-step
`host/rss_mb`, measured inside the process).

The trend is a Theil-Sen slope (the median of the slopes between every pair of steps), so
single steps with transients (a compile, a checkpoint's buffers) that come and go do not move
it, while a leak of a fixed size per step does; memory the allocator gives back is not a leak,
so only growth fails. The first 20 steps (compiles, caches filling) are left out.

A smaller-than-tiny rollout (8 new tokens) keeps the 80 steps short; the per-step work
(rollout, host text, scoring, update, metrics, TensorBoard, two checkpoints) is the same.
"""

import numpy as np
import pytest

import faults_testlib as fl

pytestmark = pytest.mark.slow

STEPS = 80
FIRST = 20  # steps before this one are warm-up
HORIZON = 200  # steps the trend is projected over
MAX_GROWTH = 0.10


def theil_sen_slope(x: np.ndarray, y: np.ndarray) -> float:
  """The median of (y[j] - y[i]) / (x[j] - x[i]) over every pair i < j."""
  i, j = np.triu_indices(len(x), k=1)
  return float(np.median((y[j] - y[i]) / (x[j] - x[i])))


def test_theil_sen_ignores_transients_and_finds_a_steady_leak():
  x = np.arange(60, dtype=np.float64)
  flat = np.full(60, 1000.0)
  flat[[10, 30, 31, 50]] += 300.0  # checkpoint-sized spikes that go away
  assert theil_sen_slope(x, flat) == 0.0
  leak = flat + 0.75 * x  # 0.75 MB per step
  assert theil_sen_slope(x, leak) == pytest.approx(0.75)


def test_rss_does_not_grow_with_steps(tmp_path_factory):
  base = fl.shared_base(tmp_path_factory)
  workdir = fl.workdir_with_pivot(base, "memory")
  run = fl.Run(workdir, (f"--config.total_steps={STEPS}", "--config.checkpoint_every=40",
                         "--config.sample_every=0", "--config.rollout.max_new_tokens=8"),
               fl.fault_env(base["cache"]), "run")
  rc = run.wait(900)
  assert rc == 0, run.output()[-4000:]
  rows = fl.read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  steps = np.arange(FIRST, STEPS + 1, dtype=np.float64)
  rss = np.array([rows[int(s) - 1]["host/rss_mb"] for s in steps])
  level = float(np.median(rss))
  slope = theil_sen_slope(steps, rss)
  growth = slope * HORIZON / level
  print(f"RSS steps {FIRST}-{STEPS}: median {level:.0f} MB, trend {slope:+.3f} MB/step"
        f" ({100 * growth:+.1f}% per {HORIZON} steps); first {rss[0]:.0f}, last {rss[-1]:.0f}")
  assert growth <= MAX_GROWTH, (
      f"RSS trend {slope:+.3f} MB/step over steps {FIRST}-{STEPS} is {100 * growth:.1f}% of"
      f" {level:.0f} MB per {HORIZON} steps (at most {100 * MAX_GROWTH:.0f}%)")
