"""The completion budgets of the arithmetic configs leave room for an honest answer in every
language they sample or evaluate.

SmolLM2's tokenizer spends 1.5-4x the English tokens on the same question in other scripts.
An answer restates the question, so an in-language answer costs about as much more: the
estimate here scales the English worked solution (pbrl_jax.data.arith) by the question's
tokens in the language over its tokens in English. A 64-token cap, what the demo and the
miniature used before, fails this for Russian (99) and Japanese (145).
"""

import functools

import pytest

from configs import demo
from configs import miniature
from pbrl_jax.data import arith
from pbrl_jax.models import bundle
from pbrl_jax.models.embedded import smollm2_gguf_path


@functools.lru_cache(maxsize=None)
def _answer_tokens() -> dict[str, float]:
  """Per language, the largest estimated answer length over 200 problems (all templates)."""
  _, tok = bundle.config_and_tokenizer(smollm2_gguf_path())
  count = lambda text: len(tok.encode(text, add_special_tokens=False))
  out = {}
  for lang in arith.LANGS:
    out[lang] = max(
        count(i.solution_en) * count(i.questions[lang]) / count(i.questions["en"])
        for i in arith.instances(200))
  return out


def test_the_estimate_is_the_english_solution_in_english():
  # Sanity of the estimate itself: in English it is the solution's own length, and the
  # costlier scripts cost more than the Latin ones.
  est = _answer_tokens()
  assert 30 <= est["en"] <= 40
  assert est["ja"] > est["ru"] > est["zh"] > max(est["de"], est["fr"], est["es"], est["pt"])


def _configs():
  yield "demo", demo.get_config()
  yield "demo:premise", demo.get_config("premise")
  for method in miniature.METHODS:
    yield f"miniature:{method}", miniature.get_config(method)


@pytest.mark.parametrize("name,config", list(_configs()), ids=[n for n, _ in _configs()])
def test_budgets_cover_an_answer_in_every_language(name, config):
  est = _answer_tokens()
  if config.rl.algorithm == "sft":
    # SFT trains on the English references: its budget is the kept reference tokens.
    need = {"en": est["en"]}
  else:
    need = {lang: est[lang] for lang in config.data.langs}
  short = {k: round(v) for k, v in need.items() if v > config.rollout.max_new_tokens}
  assert not short, (f"{name}: rollout.max_new_tokens={config.rollout.max_new_tokens} cuts off"
                     f" the estimated answer in {short}")
  eval_langs = {lang for d in config.eval.datasets for lang in d["langs"]}
  short = {lang: round(est[lang]) for lang in eval_langs if est[lang] > config.eval.max_new_tokens}
  assert not short, (f"{name}: eval.max_new_tokens={config.eval.max_new_tokens} cuts off the"
                     f" estimated answer in {short}")
