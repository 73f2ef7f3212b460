"""The reward reads each text once: responses once per scoring, references once per process."""

import collections

from configs import reward_defaults
from pbrl_jax.rewards import score
from pbrl_jax.rewards.spec import RewardSpec


def _items():
  refs = ["Anna has 3 + 5 = 8 apples.\n#### 8", "12 / 4 = 3 boxes.\n#### 3"]
  responses = ["Anna hat 3 + 5 = 8 Äpfel.\n#### 8", "Es sind 7 Kisten.\n#### 7",
               "Il y a 12 / 4 = 3 boîtes.\n#### 3"]
  return [{"lang": lang, "response": r, "reference": refs[k], "question": "?", "gold": g}
          for (lang, r, k, g) in (("de", responses[0], 0, "8"), ("de", responses[1], 1, "3"),
                                  ("fr", responses[2], 1, "3"))]


def test_each_text_is_parsed_once(monkeypatch):
  cfg = reward_defaults.get_config()
  cfg.kind = "verifiable"  # the text half and the reward, no encoder needed
  spec = RewardSpec.from_config(cfg)
  score.parse_reference.cache_clear()
  calls = collections.Counter()
  real = score.parse

  def counting(text, lang=None):
    calls[text] += 1
    return real(text, lang)

  monkeypatch.setattr(score, "parse", counting)
  items = _items()
  first = score.score_batch(spec, None, items)
  second = score.score_batch(spec, None, items)
  assert [r["verifiable"] for r in first] == [1.0, 0.0, 1.0] and first == second
  responses = [it["response"] for it in items]
  references = sorted({it["reference"] for it in items})
  # Each response once per score_batch (both halves share the parse), each reference once.
  assert {t: calls[t] for t in responses} == {t: 2 for t in responses}
  assert {t: calls[t] for t in references} == {t: 1 for t in references}
  # A caller that already parsed (the trainer) is not parsed again.
  calls.clear()
  given = [dict(it, parsed=real(it["response"], it["lang"])) for it in items]
  assert score.score_batch(spec, None, given) == first
  assert not calls


def test_a_parse_of_another_text_is_refused():
  items = _items()
  items[0]["parsed"] = score.parse(items[1]["response"], "de")
  try:
    score.with_parsed(items)
  except ValueError as e:
    assert "parsed" in str(e)
  else:
    raise AssertionError("a mismatched parse was accepted")


def test_parsed_segments_are_the_reward_segments():
  p = score.parse("Erst 3 + 5.\nAlso 8 Äpfel.\n#### 8", "de")
  assert p.final == "8" and p.segments()["answer"] == "8"
  assert p.segments() == score.segments(p.full, "de")
  q = score.parse("Ich weiß es nicht.", "de")
  assert q.final is None and q.segments()["answer"] == q.answer_part
