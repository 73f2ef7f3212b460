"""The miniature study refuses to mix arms run under different designs (`run.design`)."""

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
