"""The miniature study refuses to mix arms run under different designs (`run.design`) or
starting policies (`run.check_same_premise`), and says when its page is partial."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "experiments", "miniature"))
import run as mini_run  # pylint: disable=wrong-import-position


def _write(tmp_path, meta):
  path = str(tmp_path / "results.json")
  with open(path, "w") as f:
    json.dump({"meta": meta, "results": {"base": {"per_language": {}}}}, f)
  return path


def test_same_design_is_reused(tmp_path):
  want = mini_run.design(96, "english_sft")
  results, meta = mini_run.load_reused(_write(tmp_path, dict(want)), want)
  assert "base" in results and meta["rollout_tokens"] == want["rollout_tokens"]


@pytest.mark.parametrize("key", ["n_test", "premise", "rollout_tokens", "eval_tokens"])
def test_another_design_is_refused(tmp_path, key):
  want = mini_run.design(96, "english_sft")
  other = dict(want, **{key: "other"})
  with pytest.raises(SystemExit, match=f"meta.{key} is 'other'.*not comparable"):
    mini_run.load_reused(_write(tmp_path, other), want)


def test_the_budgets_are_the_configs():
  # The completion caps are part of the design: arms sampled or evaluated with a shorter cap
  # lose their in-language answers first (configs/common.py), so they do not mix.
  d = mini_run.design(96, "english_sft")
  assert d["rollout_tokens"] == mini_run.miniature.get_config("pbrl_hybrid").rollout.max_new_tokens
  assert d["eval_tokens"] == mini_run.miniature.get_config("sft").eval.max_new_tokens


# --- A premise rebuilt for a continued study is trained again, not evaluated again -----------


def _fake_stages(monkeypatch, losses):
  """Stands in for the stage subprocesses: records each command and writes what the real
  stage leaves behind (pivot manifest, training metrics, exported model)."""
  ran = []

  def fake_run(cmd, log_path):
    ran.append(cmd)
    workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
    module = cmd[2]
    if module.endswith("pivot_main"):
      os.makedirs(os.path.join(workdir, "pivot"), exist_ok=True)
      open(os.path.join(workdir, "pivot", "manifest.json"), "w").close()
    elif module.endswith("train_main"):
      with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps({"step": i + 1, "loss": v}) + "\n" for i, v in enumerate(losses))
    elif any(a.startswith("--export_hf=") for a in cmd):
      model = next(a.split("=", 1)[1] for a in cmd if a.startswith("--export_hf="))
      os.makedirs(model, exist_ok=True)
      open(os.path.join(model, "config.json"), "w").close()
    else:
      raise AssertionError(f"unexpected stage {cmd}")

  monkeypatch.setattr(mini_run, "_run", fake_run)
  return ran


SAVED_LOSSES = [2.31, 1.87, 1.52, 1.20]


def test_a_reused_premise_is_retrained_and_checked_not_evaluated(tmp_path, monkeypatch):
  ran = _fake_stages(monkeypatch, [v * (1 + 1e-5) for v in SAVED_LOSSES])  # float drift
  saved = {"per_language": {"en": {"accuracy": 0.8}}}
  result, model = mini_run.run_premise(str(tmp_path), str(tmp_path / "data"), None, True,
                                       reused=saved, reused_losses=SAVED_LOSSES)
  assert result is saved and model == str(tmp_path / "premise" / "model")
  stages = [next(a for a in cmd if a.startswith("pbrl_jax.cli")) for cmd in ran]
  assert stages == ["pbrl_jax.cli.pivot_main", "pbrl_jax.cli.train_main",
                    "pbrl_jax.cli.eval_main"]
  assert any(a.startswith("--export_hf=") for a in ran[-1])  # the export, not an evaluation


@pytest.mark.parametrize("losses, match", [
    ([2.31, 1.87, 1.55, 1.20], "first difference at step 3"),  # another training
    (SAVED_LOSSES[:3], "3 vs 4 logged steps"),                   # stopped early
])
def test_a_different_rebuilt_premise_is_refused(tmp_path, monkeypatch, losses, match):
  _fake_stages(monkeypatch, losses)
  with pytest.raises(SystemExit, match=match):
    mini_run.run_premise(str(tmp_path), str(tmp_path / "data"), None, True,
                         reused={"per_language": {}}, reused_losses=SAVED_LOSSES)


def test_a_premise_without_saved_losses_cannot_be_checked():
  with pytest.raises(SystemExit, match="no premise_losses"):
    mini_run.check_same_premise(None, SAVED_LOSSES)


def test_the_page_of_a_partial_study_says_what_is_pending():
  meta = {"pending": ["premise", "pbrl_hybrid (seed 0)"]}
  status = mini_run._status({"base": {}}, meta)  # pylint: disable=protected-access
  assert status[0].startswith("**Partial study:** done base; pending premise,"
                              " pbrl_hybrid (seed 0).")
  assert mini_run._status({"base": {}}, {"pending": []}) == []  # pylint: disable=protected-access


def test_a_page_with_fewer_seeds_than_the_design_says_so():
  # A run's own plan may be complete (it asked for one arm) while RL arms still miss seeds.
  results = {"base": {}, "premise": {}, "sft (seed 0)": {}, "rlvr_grpo (seed 0)": {},
             "rlvr_grpo (seed 1)": {}, "pbrl_hybrid (seed 0)": {}}
  status = mini_run._status(results, {"pending": []})  # pylint: disable=protected-access
  assert status[0] == ("**Seeds:** the design has 3 seeds per RL arm; this page holds"
                       " rlvr_grpo 2, pbrl_hybrid 1. The endpoints average the seeds there"
                       " are.")
  full = dict(results, **{f"{m} (seed {s})": {} for m in ("rlvr_grpo", "pbrl_hybrid")
                          for s in range(3)})
  assert mini_run._status(full, {"pending": []}) == []  # pylint: disable=protected-access


def test_a_partial_page_names_the_premise_it_waits_for():
  base = {"base": {"summary": {"english_accuracy": 0.125, "non_english_mean": 0.13}}}
  note = mini_run._premise_note  # pylint: disable=protected-access
  waiting = note(base, {"premise": "english_sft"})
  assert "not built yet" in waiting and "English 12.5% vs non-English mean 13.0%" in waiting
  assert "no premise stage" in note(base, {"premise": "none"})


# --- A run that adds arms keeps the arms finished before it ----------------------------------


def test_finished_arms_come_from_the_reused_file_and_the_run_directory(tmp_path):
  out = tmp_path / "out"
  for arm, evaluated in [("pbrl_hybrid-s1", True), ("rlvr_grpo-s0", False),
                         ("premise", True), ("notamethod-s0", True)]:
    (out / arm / "eval").mkdir(parents=True)
    if evaluated:
      (out / arm / "eval" / "final.json").write_text("{}")
  reused = {"base": {}, "premise": {}, "sft (seed 0)": {}, "pbrl_embedding (seed 2)": {}}
  arms = mini_run.finished_arms(str(out), reused, "saved.json")
  # Study order (configs/miniature.METHODS, then seed); the unevaluated RLVR arm is not done.
  assert arms == [("sft", 0), ("pbrl_embedding", 2), ("pbrl_hybrid", 1)]
  assert mini_run.finished_arms(str(tmp_path / "missing"), {}, "") == []


def test_a_reused_result_that_is_no_arm_is_refused():
  with pytest.raises(SystemExit, match=r"--reuse saved.json: result 'ppo2 \(seed 0\)'"):
    mini_run.finished_arms("/nonexistent", {"ppo2 (seed 0)": {}}, "saved.json")


# --- Endpoints -------------------------------------------------------------------------------


def test_the_in_language_endpoint_counts_only_right_answers_in_the_question_language():
  langs = ["en", "de", "es", "fr", "ja", "pt", "ru", "zh"]

  def records(correct, consistent):  # problem index -> (right?, in the question's language?)
    return [{"id": f"p{p}", "lang": lang, "correct": correct(p), "language_consistent":
             consistent(p)} for p in range(4) for lang in langs]

  results = {  # the premise is always right, in English; the hybrid right on p0, p1, in-language
      "premise": {"records": records(lambda p: True, lambda p: False)},
      "pbrl_hybrid (seed 0)": {"records": records(lambda p: p < 2, lambda p: True)}}
  rows = {(r["comparison"], r["languages"]): r
          for r in mini_run.endpoint_rows(results, n_boot=50)}
  assert set(rows) == {("pbrl_hybrid - premise", g)
                       for g in ("trained", "held-out", "trained, in-language")}
  assert rows[("pbrl_hybrid - premise", "trained")]["delta"] == -0.5
  assert rows[("pbrl_hybrid - premise", "trained, in-language")]["delta"] == 0.5
  assert mini_run.in_language_accuracy(results["pbrl_hybrid (seed 0)"]["records"], "de") == 0.5
  assert mini_run.in_language_accuracy(results["premise"]["records"], "de") == 0.0
