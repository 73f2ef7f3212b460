"""`evaluate` end to end with a real (tiny, random) decoder, our sampler and the SmolLM2
tokenizer: batching, padding, one compilation, and records consistent with the scoring."""

import json

import numpy as np
import pytest

from pbrl_jax import evaluate as ev
from pbrl_jax import stats
from pbrl_jax import padding
from pbrl_jax import sampling
from pbrl_jax.models import ModelBundle
from pbrl_jax.rewards import answers

import eval_testlib as tl

MAX_NEW = 8


@pytest.fixture(scope="module")
def model():
  tok = tl.smollm2_tokenizer()
  config = tl.tiny_config(tok)
  return config, tl.tiny_params(config), tok


def _check_records(out, examples, num_samples):
  assert [(r["id"], r["lang"]) for r in out["records"]] == [(e.id, e.lang) for e in examples]
  for rec, ex in zip(out["records"], examples):
    assert rec["prompt"] == ev.default_prompt(ex)
    assert rec["gold"] == ex.answer
    for s in rec.get("samples", [rec]):
      assert s["extracted"] == answers.extract_final_answer(s["response"], ex.lang)
      assert s["correct"] == answers.answers_match(s["extracted"], ex.answer)
      assert 1 <= s["length"] <= MAX_NEW
      if s["length_capped"]:
        assert s["length"] == MAX_NEW
    if num_samples > 1:
      assert len(rec["samples"]) == num_samples
      assert rec["num_correct"] == sum(s["correct"] for s in rec["samples"])


def test_greedy_evaluate_accounting(model):
  config, params, tok = model
  examples = tl.examples()  # en 3, de 2, th 2 -> two batches of 4, the last padded
  before = sampling._sample_program._cache_size()  # pylint: disable=protected-access
  out = ev.evaluate(params, config, tok, examples, max_new_tokens=MAX_NEW, batch_size=4,
                    trained_langs=("de",), n_boot=200)
  # Batches of length-sorted prompts, each padded to its quarter-octave length: at most one
  # new program per distinct padded length (none if another test compiled the shape) ...
  ids = sampling.encode_prompts(tok, [ev.default_prompt(e) for e in examples])
  sizes = sorted(len(x) for x in ids)
  padded = {padding.octave_bucket_length(max(sizes[i:i + 4])) for i in range(0, len(sizes), 4)}
  compiled = sampling._sample_program._cache_size()  # pylint: disable=protected-access
  assert compiled <= before + len(padded)
  # ... and the same prompts in other batches of the same lengths reuse them.
  backwards = ev.evaluate(params, config, tok, examples[::-1], max_new_tokens=MAX_NEW,
                          batch_size=4, n_boot=10)
  assert sampling._sample_program._cache_size() == compiled  # pylint: disable=protected-access
  # Records come back in input order whatever order the batches ran in.
  assert ([r["response"] for r in backwards["records"]]
          == [r["response"] for r in out["records"]][::-1])
  per = out["per_language"]
  assert {k: v["n"] for k, v in per.items()} == {"en": 3, "de": 2, "th": 2}
  for lang, e in per.items():
    for key in ("accuracy", "ci_low", "ci_high", "language_consistent", "length_capped",
                "repetition"):
      assert 0.0 <= e[key] <= 1.0, (lang, key, e[key])
    assert e["ci_low"] <= e["accuracy"] <= e["ci_high"]
    assert 1 <= e["mean_length"] <= MAX_NEW
    assert e["trained"] is (lang == "de")
    recs = [r for r in out["records"] if r["lang"] == lang]
    assert e["accuracy"] == pytest.approx(np.mean([r["correct"] for r in recs]))
    assert e["length_capped"] == pytest.approx(np.mean([r["length_capped"] for r in recs]))
  _check_records(out, examples, 1)
  s = out["summary"]
  assert s["gap"] == pytest.approx(s["english_accuracy"] - s["non_english_mean"])
  assert s["trained_langs"] == ["de"] and s["held_out_langs"] == ["th"]
  assert out["settings"]["generated_tokens"] == sum(r["length"] for r in out["records"])
  json.dumps(out, allow_nan=False)

  # Greedy decoding does not depend on the batching: one batch of 7 gives the same texts,
  # and so does the bundle's own text generation path.
  again = ev.evaluate(params, config, tok, examples, max_new_tokens=MAX_NEW, batch_size=7,
                      n_boot=200)
  assert [r["response"] for r in again["records"]] == [r["response"] for r in out["records"]]
  texts = sampling.generate_text(ModelBundle(config, params, tok),
                                 [ev.default_prompt(e) for e in examples[:3]],
                                 max_new_tokens=MAX_NEW)
  assert texts == [r["response"] for r in out["records"][:3]]


@pytest.mark.slow
def test_sampled_pass_at_k(model):
  config, params, tok = model
  examples = tl.examples(("en", "th"), (2, 1))
  out = ev.evaluate(params, config, tok, examples, max_new_tokens=MAX_NEW, batch_size=2,
                    num_samples=4, temperature=1.0, seed=3, n_boot=100)
  _check_records(out, examples, 4)
  for rec in out["records"]:
    c = rec["num_correct"]
    assert [rec[f"pass@{k}"] for k in (1, 2, 4)] == [stats.pass_at_k(4, c, k) for k in (1, 2, 4)]
  en = out["per_language"]["en"]
  assert en["accuracy"] == en["pass@1"]
  assert 0.0 <= en["pass@1"] <= en["pass@2"] <= en["pass@4"] <= 1.0
  # Sampling at temperature 1 from a random model: the 4 samples of a prompt differ.
  assert len({s["response"] for s in out["records"][0]["samples"]}) > 1
  same = ev.evaluate(params, config, tok, examples, max_new_tokens=MAX_NEW, batch_size=2,
                     num_samples=4, temperature=1.0, seed=3, n_boot=100)
  assert same["records"] == out["records"]  # a fixed seed reproduces the samples
