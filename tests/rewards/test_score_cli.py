"""pbrl-score end to end: a config file, a JSONL in, a JSONL of every component out."""

import json
import os
import subprocess
import sys

import pytest

from pbrl_jax.cli import score_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = """
import ml_collections
from configs import reward_defaults

def get_config():
  c = ml_collections.ConfigDict()
  c.reward = reward_defaults.get_config()
  return c
"""
ITEMS = [
    {"lang": "de", "question": "Anna hat 3 Äpfel und kauft 5 dazu. Wie viele hat sie?",
     "response": "Anna hat 3 Äpfel und kauft 5 dazu, also 3 + 5 = 8 Äpfel.\n#### 8",
     "reference": "Anna has 3 apples and buys 5 more, so 3 + 5 = 8 apples.\n#### 8",
     "answer": "8"},
    {"lang": "de", "response": "Anna has 3 apples and buys 5 more, so 3 + 5 = 8 apples.\n#### 8",
     "reference": "Anna has 3 apples and buys 5 more, so 3 + 5 = 8 apples.\n#### 8"},
]


def _run(tmp_path, lines, extra=()):
  cfg = tmp_path / "cfg.py"
  cfg.write_text(CONFIG)
  inp = tmp_path / "pairs.jsonl"
  inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path / "scores.jsonl"
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(
      [sys.executable, "-m", "pbrl_jax.cli.score_main", f"--config={cfg}", f"--input={inp}",
       f"--output={out}", *extra], capture_output=True, text=True, env=env, cwd=REPO,
      timeout=300)
  return proc, out


def test_cli_scores_every_line(tmp_path):
  proc, out = _run(tmp_path, [json.dumps(x, ensure_ascii=False) for x in ITEMS])
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
  assert [r["id"] for r in rows] == [1, 2]
  honest, english = rows
  for key in ("reward", "base", "gate", "answer_precision", "reasoning_coherence",
              "similarity", "verifiable", "gate_language", "copy_reference"):
    assert key in honest
  assert honest["verifiable"] == 1.0 and honest["has_gold"] == 1.0
  assert honest["reward"] > 0.5
  assert english["gate_language"] == 0.0 and english["reward"] == 0.0


def test_cli_bad_line_names_file_and_line(tmp_path):
  lines = [json.dumps(ITEMS[0]), "{not json", json.dumps(ITEMS[1])]
  proc, out = _run(tmp_path, lines)
  assert proc.returncode != 0
  assert f"{tmp_path / 'pairs.jsonl'}:2: not valid JSON" in proc.stderr
  assert not out.exists()


def test_missing_field_is_named(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text(json.dumps({"lang": "de", "response": "x"}) + "\n")
  with pytest.raises(score_main.InputError, match=r"x.jsonl:1: field 'reference'"):
    list(score_main.read_items(str(path)))


def test_config_override_reaches_the_spec(tmp_path):
  proc, out = _run(tmp_path, [json.dumps(ITEMS[0], ensure_ascii=False)],
                   ["--config.reward.kind=verifiable"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = json.loads(out.read_text(encoding="utf-8"))
  assert row["reward"] == 1.0 and "similarity" not in row
  proc, _ = _run(tmp_path, [json.dumps(ITEMS[0])], ["--config.reward.alpha=2.0"])
  assert proc.returncode != 0 and "reward.alpha" in proc.stderr
