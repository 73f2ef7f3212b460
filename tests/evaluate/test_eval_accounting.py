"""Scoring and summaries with known completions in several scripts, checked exactly."""

import json

import numpy as np
import pytest

from pbrl_jax import evaluate as ev
from pbrl_jax import stats
from pbrl_jax.data.records import Example

LOOP = " ".join(["so"] * 40)
# (lang, gold, completion, generated length, capped, correct, language-consistent, loop)
CASES = [
    ("en", "42", "She has 6 * 7 = 42 apples.\n#### 42", 20, False, True, True, False),
    ("en", "42", "The answer is 41.", 6, False, False, True, False),
    ("en", "42", LOOP, 64, True, False, True, True),
    # Arabic-Indic digits, the Arabic thousands separator, an English answer to Arabic.
    ("ar", "1234", "لديها ١٢٣٤ تفاحة.\n#### ١٢٣٤", 30, False, True, True, False),
    ("ar", "6", "الإجابة هي ٥", 10, False, False, True, False),
    ("ar", "1234", "The answer is 1234", 8, False, True, False, False),
    ("ar", "1234", "الجواب هو ١٬٢٣٤", 12, False, True, True, False),
    # Full-width digits.
    ("zh", "42", "答案是４２", 5, False, True, True, False),
    ("zh", "12", "所以总数是１２。\n#### １２", 11, False, True, True, False),
    ("zh", "3", "我不知道。", 4, False, False, True, False),
    # Devanagari digits.
    ("hi", "42", "उत्तर: ४२", 7, False, True, True, False),
    # Letterless answers are undetermined, never counted as the question's language.
    ("hi", "8", "#### ७", 3, False, False, False, False),
    # Decimal commas and thousands dots; an English answer to a German question.
    ("de", "3.5", "Die Antwort ist 3,5", 9, False, True, True, False),
    ("de", "1234", "#### 1.234", 5, False, True, False, False),
    ("de", "25", "#### 2,5", 5, False, False, False, False),
    ("de", "3.5", "So the total is 3.5 and that is the answer.", 14, False, True, False, False),
    # One word without a function word: undetermined.
    ("de", "1234.5", "Antwort: 1.234,5", 9, False, True, False, False),
    # A canonical gold '1.234' is one point two three four, also for German.
    ("de", "1.234", "Die Antwort ist 1,234", 9, False, True, True, False),
]


def _score(cases, trained=(), n_boot=1000, seed=0):
  examples = [Example(f"q{i}", c[0], f"question {i}", c[1]) for i, c in enumerate(cases)]
  prompts = [ev.default_prompt(ex) for ex in examples]
  records = ev.score_examples(examples, prompts, [[c[2]] for c in cases],
                              [[c[3]] for c in cases], [[c[4]] for c in cases])
  return records, ev.summarize(records, trained, n_boot=n_boot, seed=seed)


def test_records_follow_the_known_completions():
  records, _ = _score(CASES)
  for rec, (lang, gold, text, length, capped, correct, consistent, loop) in zip(records, CASES):
    assert rec["lang"] == lang and rec["response"] == text
    assert rec["gold"] == gold
    assert rec["correct"] is correct, (lang, text, rec["extracted"])
    assert rec["language_consistent"] is consistent, (lang, text, rec["language_consistency"])
    assert rec["repetition"] is loop, (lang, text)
    assert rec["length"] == length and rec["length_capped"] is capped
    assert "#### <number>" in rec["prompt"] and rec["prompt"].startswith(f"question ")
  assert [r["extracted"] for r in records] == [
      "42", "41", None, "1234", "5", "1234", "1234", "42", "12", None, "42", "7", "3.5",
      "1234", "2.5", "3.5", "1234.5", "1.234"]


def test_per_language_accuracy_gap_and_cis_exactly():
  _, out = _score(CASES, trained=("de", "ar"))
  per = out["per_language"]
  assert sorted(per) == ["ar", "de", "en", "hi", "zh"]
  expected_acc = {"en": 1 / 3, "ar": 3 / 4, "zh": 2 / 3, "hi": 1 / 2, "de": 5 / 6}
  expected_n = {"en": 3, "ar": 4, "zh": 3, "hi": 2, "de": 6}
  for lang, acc in expected_acc.items():
    assert per[lang]["n"] == expected_n[lang]
    assert per[lang]["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert per[lang]["trained"] is (lang in ("de", "ar"))
    correct = np.array([c[5] for c in CASES if c[0] == lang], float)
    assert (per[lang]["ci_low"], per[lang]["ci_high"]) == stats.bootstrap_ci(correct, 1000, 0)
    assert per[lang]["ci_low"] <= acc <= per[lang]["ci_high"]
  # Two questions, one right: resamples are all-wrong, half or all-right.
  assert (per["hi"]["ci_low"], per["hi"]["ci_high"]) == (0.0, 1.0)
  assert per["en"]["length_capped"] == pytest.approx(1 / 3)
  assert per["en"]["repetition"] == pytest.approx(1 / 3)
  assert per["en"]["mean_length"] == pytest.approx((20 + 6 + 64) / 3)
  assert per["ar"]["language_consistent"] == pytest.approx(3 / 4)
  assert per["de"]["language_consistent"] == pytest.approx(2 / 6)
  # Three of the six German answers cannot be placed; of the other three, two are German.
  assert per["de"]["language_undetermined"] == pytest.approx(3 / 6)
  assert per["de"]["language_consistent_determined"] == pytest.approx(2 / 3)
  assert per["hi"]["language_undetermined"] == pytest.approx(1 / 2)
  assert per["hi"]["language_consistent_determined"] == 1.0
  assert per["en"]["language_undetermined"] == 0.0
  assert per["zh"]["language_consistent"] == 1.0 and per["zh"]["length_capped"] == 0.0
  assert per["de"]["mean_length"] == pytest.approx((9 + 5 + 5 + 14 + 9 + 9) / 6)

  s = out["summary"]
  non_en = np.mean([3 / 4, 2 / 3, 1 / 2, 5 / 6])
  assert s["n"] == len(CASES) and s["num_languages"] == 5
  assert s["english_accuracy"] == pytest.approx(1 / 3)
  assert s["non_english_mean"] == pytest.approx(non_en)
  assert s["gap"] == pytest.approx(1 / 3 - non_en)
  assert s["trained_mean"] == pytest.approx((3 / 4 + 5 / 6) / 2)
  assert s["held_out_mean"] == pytest.approx((2 / 3 + 1 / 2) / 2)
  assert s["trained_langs"] == ["ar", "de"] and s["held_out_langs"] == ["hi", "zh"]
  assert s["micro_accuracy"] == pytest.approx(np.mean([c[5] for c in CASES]))
  by_lang = {}
  for i, c in enumerate(CASES):
    by_lang.setdefault(c[0], {})[f"q{i}"] = float(c[5])
  assert (s["gap_ci_low"], s["gap_ci_high"]) == stats.bootstrap_gap_ci(by_lang, 1000, 0)
  assert s["gap_ci_low"] < s["gap"] < s["gap_ci_high"]
  json.dumps(out, allow_nan=False)  # JSON-ready, no NaN


def test_english_only_in_trained_mean_when_listed_and_missing_means_are_none():
  _, out = _score([c for c in CASES if c[0] in ("en", "de")], trained=("en",))
  s = out["summary"]
  assert s["trained_mean"] == pytest.approx(1 / 3)
  assert s["held_out_mean"] == pytest.approx(5 / 6)
  _, out = _score([c for c in CASES if c[0] == "de"])
  assert out["summary"]["english_accuracy"] is None and out["summary"]["gap"] is None
  assert out["summary"]["trained_mean"] is None


def test_multiple_choice_letters():
  examples = [Example("m0", "fr", "Q?", "B", ("x", "y", "z")),
              Example("m1", "fr", "Q?", "B", ("x", "y", "z"))]
  prompts = [ev.default_prompt(ex) for ex in examples]
  assert "B. y" in prompts[0] and "#### <letter>" in prompts[0]
  records = ev.score_examples(examples, prompts, [["La réponse est (B)."], ["#### C"]],
                              [[5], [3]], [[False], [False]])
  assert [r["extracted"] for r in records] == ["B", "C"]
  assert ev.summarize(records)["per_language"]["fr"]["accuracy"] == 0.5


def test_pass_at_k_accounting_with_samples():
  examples = [Example("a", "en", "q", "7"), Example("b", "en", "q", "9"),
              Example("a", "de", "q", "7")]
  texts = [["#### 7", "#### 8", "Die Antwort ist 7", "nothing"],
           ["#### 1", "#### 2", "#### 3", "#### 4"],
           ["#### 7", "#### 7", "#### 7", "#### 7"]]
  lengths = [[3, 3, 5, 2], [3, 3, 3, 3], [3, 3, 3, 16]]
  capped = [[False, False, False, True], [False, True, False, True], [False] * 3 + [True]]
  records = ev.score_examples(examples, ["p"] * 3, texts, lengths, capped)
  r0 = records[0]
  assert r0["response"] == "#### 7" and r0["correct"] is True  # first sample at top level
  assert r0["num_samples"] == 4 and r0["num_correct"] == 2
  assert r0["pass@1"] == pytest.approx(0.5)
  assert r0["pass@2"] == pytest.approx(1 - 1 / 6)
  assert r0["pass@4"] == 1.0
  assert records[1]["num_correct"] == 0 and records[1]["pass@4"] == 0.0
  assert [s["extracted"] for s in r0["samples"]] == ["7", "8", "7", None]
  out = ev.summarize(records)
  en = out["per_language"]["en"]
  assert en["accuracy"] == pytest.approx(0.25) and en["pass@1"] == pytest.approx(0.25)
  assert en["pass@2"] == pytest.approx((5 / 6 + 0) / 2)
  assert en["pass@4"] == pytest.approx(0.5)
  assert en["length_capped"] == pytest.approx(3 / 8)  # over all 8 samples
  assert en["mean_length"] == pytest.approx(25 / 8)
  assert out["per_language"]["de"]["accuracy"] == 1.0
  assert out["summary"]["gap"] == pytest.approx(0.25 - 1.0)
  assert out["summary"]["pass@4_mean"] == pytest.approx((0.5 + 1.0) / 2)


def test_evaluate_rejects_bad_settings_before_generating():
  ex = [Example("a", "en", "q", "7")]
  with pytest.raises(ValueError, match="temperature"):
    ev.evaluate(None, None, None, ex, max_new_tokens=4, batch_size=2, num_samples=4)
  with pytest.raises(ValueError, match="no gold answer"):
    ev.evaluate(None, None, None, [Example("b", "de", "q")], max_new_tokens=4, batch_size=2)
  with pytest.raises(ValueError, match="one entry per example"):
    ev.score_examples(ex, [], [], [], [])
