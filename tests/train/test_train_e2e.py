"""End-to-end: pbrl-train on configs/tiny.py with GRPO and PPO; SIGTERM then exact resume."""

import glob
import json
import math
import os
import shutil
import signal
import subprocess
import time

import pytest

import train_testlib as tl
from pbrl_jax import metrics as metrics_lib

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pivot_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tiny_pivot"))
  tl.build_tiny_pivot(d)
  return d


def _check_run(workdir, steps):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(1, steps + 1))
  for r in rows:
    for key in ("loss", "reward_mean", "kl"):
      assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
    assert 0.0 <= r["reward_mean"] <= 1.0, r  # (PPO's k1 KL may be negative: no sign check)
    assert r["skipped"] == 0.0 and r["nonfinite_total"] == 0.0, r
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["total_steps"] == steps
  assert os.path.exists(os.path.join(workdir, "report.md"))
  # Sample completions: the first of every group, every step, with its reward.
  samples = metrics_lib.read_jsonl(os.path.join(workdir, "samples.jsonl"))
  assert sorted({s["step"] for s in samples}) == list(range(1, steps + 1))
  assert all(isinstance(s["text"], str) and 0.0 <= s["reward"] <= 1.0 for s in samples)
  return rows


STEPS = tl.REFERENCE_STEPS


@pytest.fixture(scope="module")
def uninterrupted():
  """The test run's shared uninterrupted GRPO run (train_testlib.reference_run): its outputs
  are checked, a copy is resumed for more steps, and it is the reference of the SIGTERM run."""
  workdir = tl.reference_run()
  return workdir, tl.strip_times(metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")))


def _resume_for_one_more_step(cfg, workdir, done):
  """The newest checkpoint restores: a second invocation with one more step resumes from it."""
  proc = subprocess.run(
      [tl.sys.executable, "-m", "pbrl_jax.cli.train_main", f"--config={cfg}",
       f"--workdir={workdir}", f"--config.total_steps={done + 1}"],
      env=tl.cli_env(), capture_output=True, text=True, timeout=900, cwd=tl.REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f"resumed from step {done}" in proc.stderr
  _check_run(workdir, done + 1)


def test_grpo_cli_trains_and_checkpoint_restores(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  _check_run(workdir, STEPS)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)  # the shared run stays as it was
  _resume_for_one_more_step(tl.TINY, resumed, STEPS)


def test_ppo_cli_trains_and_checkpoint_restores(pivot_dir, tmp_path):
  workdir = str(tmp_path / "ppo")
  tl.copy_pivot(pivot_dir, workdir)
  cfg = tl.TINY + ":ppo"
  proc = subprocess.run(
      [tl.sys.executable, "-m", "pbrl_jax.cli.train_main", f"--config={cfg}",
       f"--workdir={workdir}", "--config.total_steps=3"],
      env=tl.cli_env(), capture_output=True, text=True, timeout=900, cwd=tl.REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = _check_run(workdir, 3)
  assert "value_loss" in rows[-1] and "explained_variance" in rows[-1]
  _resume_for_one_more_step(cfg, workdir, 3)


def test_sigterm_then_resume_equals_uninterrupted(uninterrupted, pivot_dir, tmp_path):
  _, reference = uninterrupted
  steps = STEPS
  cut = str(tmp_path / "cut")
  tl.copy_pivot(pivot_dir, cut)
  # No periodic checkpoint (the reference saved every 2 steps): the one the run resumes from
  # is the one SIGTERM wrote, and the cadence must not change a single metric.
  p = subprocess.Popen(tl.train_cmd(cut, f"--config.total_steps={steps}",
                                    "--config.checkpoint_every=100"),
                       env=tl.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, cwd=tl.REPO)
  path = os.path.join(cut, "metrics.jsonl")
  deadline = time.time() + 900
  while time.time() < deadline:
    if os.path.exists(path) and len(metrics_lib.read_jsonl(path)) >= 2:
      break
    assert p.poll() is None, p.communicate()[1][-4000:]
    time.sleep(0.2)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-4000:]
  stopped_at = len(metrics_lib.read_jsonl(path))
  assert 2 <= stopped_at < steps, "the signal should stop the run early"
  proc = tl.run_train(cut, f"--config.total_steps={steps}", "--config.checkpoint_every=100")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f"resumed from step {stopped_at}" in proc.stderr
  resumed = tl.strip_times(metrics_lib.read_jsonl(path))
  assert resumed == reference
