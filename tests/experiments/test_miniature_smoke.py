"""The miniature study's script end to end on a tiny random policy, so it cannot rot."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_smoke_run_writes_the_page(tmp_path):
  out = str(tmp_path / "mini")
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "miniature", "run.py"), "--out", out,
       "--smoke", "--methods", "rlvr_grpo,pbrl_hybrid", "--seeds", "0", "--n_train", "8",
       "--n_test", "2"],
      capture_output=True, text=True, timeout=1500, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  # A page after every stage, each naming the stages still to run (a study of several
  # sittings is committed stage by stage).
  assert "(pending: premise, rlvr_grpo (seed 0), pbrl_hybrid (seed 0))" in proc.stdout
  assert "(pending: pbrl_hybrid (seed 0))" in proc.stdout
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  results = saved["results"]
  assert saved["meta"]["pending"] == []
  assert len(saved["meta"]["premise_losses"]) == 1  # the rebuilt premise's fingerprint
  # Two RL arms (the SFT arm's path is the premise's, which every run takes).
  assert list(results) == ["base", "premise", "rlvr_grpo (seed 0)", "pbrl_hybrid (seed 0)"]
  # Every arm starts from the premise policy (English SFT, adapters merged and exported).
  premise = os.path.join(out, "premise", "model")
  assert os.path.exists(os.path.join(premise, "config.json"))
  for arm in ("rlvr_grpo-s0", "pbrl_hybrid-s0"):
    with open(os.path.join(out, arm, "config.json")) as f:
      model = json.load(f)["model"]
    assert model["path"] == premise and not model["random_init"], (arm, model)
  with open(os.path.join(out, "premise", "config.json")) as f:
    assert json.load(f)["data"]["langs"] == ["en"]
  for r in results.values():
    assert set(r["per_language"]) == {"en", "de", "fr", "ru", "zh", "es", "ja", "pt"}
    assert all(v["n"] == 2 for v in r["per_language"].values())
  assert results["base"]["summary"]["trained_langs"] == ["de", "fr", "ru", "zh"]
  with open(os.path.join(out, "results.md")) as f:
    page = f.read()
  assert "| base |" in page and "| pbrl_hybrid (seed 0) |" in page
  assert "Language consistency" in page
  assert "counting only answers written in the question's language" in page
  assert "| premise (sft_en) | 1 |" in page and "| rlvr_grpo (seed 0) | 1 |" in page  # training
  # The primary endpoint: every arm against its starting policy, and hybrid against RLVR.
  assert "## Primary endpoint" in page
  assert "| pbrl_hybrid - premise | trained |" in page
  assert "| pbrl_hybrid - rlvr_grpo | trained |" in page
  assert os.path.getsize(os.path.join(out, "accuracy.png")) > 1000
  # Finished stages are skipped on a rerun.
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "miniature", "run.py"), "--out", out,
       "--smoke", "--methods", "rlvr_grpo", "--seeds", "0", "--n_train", "8", "--n_test", "2"],
      capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "pbrl_jax.cli" not in proc.stdout  # no stage ran again
  with open(os.path.join(out, "results.json")) as f:
    rerun = json.load(f)["results"]
  # A run narrowed to one arm keeps the arms finished before it (here the hybrid's).
  assert rerun == results
  # Another machine continues the study from the saved results.json alone, again asking for
  # one arm: the arms the file holds are not rerun and none is dropped, and a file of another
  # design is refused.
  again = str(tmp_path / "elsewhere")
  cmd = [sys.executable, os.path.join(REPO, "experiments", "miniature", "run.py"), "--out",
         again, "--smoke", "--methods", "rlvr_grpo", "--seeds", "0", "--n_train", "8",
         "--reuse", os.path.join(out, "results.json")]
  proc = subprocess.run(cmd + ["--n_test", "2"], capture_output=True, text=True, timeout=600,
                        env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "pbrl_jax.cli" not in proc.stdout  # every arm, the base and the premise reused
  with open(os.path.join(again, "results.json")) as f:
    continued = json.load(f)
  assert continued["results"] == results
  assert continued["meta"]["reused"]["arms"] == ["base", "pbrl_hybrid (seed 0)", "premise",
                                                 "rlvr_grpo (seed 0)"]
  assert continued["meta"]["training"]["pbrl_hybrid (seed 0)"]["steps"] == 1
  assert continued["meta"]["training"]["rlvr_grpo (seed 0)"]["steps"] == 1
  proc = subprocess.run(cmd + ["--n_test", "3"], capture_output=True, text=True, timeout=600,
                        env=env, cwd=REPO)
  assert proc.returncode != 0 and "not comparable" in proc.stderr
