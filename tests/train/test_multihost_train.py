"""Multi-host training: 2 local JAX processes (2 CPU devices each) train like 1 process (4)."""

import math
import os

import pytest

import local_cluster
import train_testlib as tl
from pbrl_jax import checkpoint as ckpt_lib
from pbrl_jax import metrics as metrics_lib

pytestmark = pytest.mark.slow

STEPS = 3
FLAGS = (f"--config.total_steps={STEPS}", "--config.checkpoint_every=100")


def _assert_same_metrics(got, want, rtol=1e-5, atol=1e-6):
  assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
  for g, w in zip(got, want):
    assert sorted(g) == sorted(w)
    for key, wv in w.items():
      gv = g[key]
      if isinstance(wv, float) and not (math.isnan(wv) and math.isnan(gv)):
        assert gv == pytest.approx(wv, rel=rtol, abs=atol), (w["step"], key, gv, wv)
      else:
        assert gv == wv, (w["step"], key)


def test_two_processes_train_like_one(tmp_path):
  pivot = str(tmp_path / "pivot")
  tl.build_tiny_pivot(pivot)
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  tl.copy_pivot(pivot, one)
  tl.copy_pivot(pivot, two)

  env = tl.cli_env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  proc = tl.subprocess.run(tl.train_cmd(one, *FLAGS), env=env, capture_output=True, text=True,
                           timeout=900, cwd=tl.REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]

  # The same command on every "host"; they share the workdir as pod workers share a bucket.
  results = local_cluster.launch_local_processes(
      "pbrl_jax.cli.train_main", tl.train_cmd(two, *FLAGS)[3:], num_processes=2,
      devices_per_process=2, timeout_s=900, extra_env=tl.cli_env(), cwd=tl.REPO)
  assert all(r.returncode == 0 for r in results)
  want_raw = metrics_lib.read_jsonl(os.path.join(one, "metrics.jsonl"))
  got_raw = metrics_lib.read_jsonl(os.path.join(two, "metrics.jsonl"))
  # Each host scored the text of its own rows: process 0 (which writes the metrics) half of
  # them. The rewards of all rows, gathered from both hosts, give every metric below.
  assert [r["host/scored_rows"] for r in got_raw] == [
      r["host/scored_rows"] / 2 for r in want_raw] == [4.0] * STEPS
  want, got = tl.strip_times(want_raw), tl.strip_times(got_raw)
  # Every metric of every step: the loss, the KL, the rewards and their components, the
  # rollout lengths (the same sampled tokens), per-language figures.
  _assert_same_metrics(got, want)
  # The 2-process run saved a restorable final checkpoint.
  manager = ckpt_lib.make_manager(os.path.join(two, "checkpoints"))
  assert manager.latest_step() == STEPS
