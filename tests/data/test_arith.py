"""The miniature study's arithmetic problems: parallel, correct, in the language they claim."""

import collections
import re

import pytest

from pbrl_jax.data import arith, readers
from pbrl_jax.data.pivot import read_references_jsonl
from pbrl_jax.rewards import answers, langid


def test_instances_are_deterministic_parallel_and_correct():
  a, b = arith.instances(40, seed=3), arith.instances(40, seed=3)
  assert a == b
  assert arith.instances(40, seed=4) != a
  ops = {"buy_more": lambda x, y: x + y, "give_away": lambda x, y: x - y,
         "boxes": lambda x, y: x * y, "class_size": lambda x, y: x + y}
  for inst in a:
    assert set(inst.questions) == set(arith.LANGS)
    # Every language states the same two numbers (the problem is parallel).
    nums = {lang: re.findall(r"\d+", q) for lang, q in inst.questions.items()}
    assert len({tuple(v) for v in nums.values()}) == 1, nums
    x, y = map(int, nums["en"])
    kind = inst.id.split("-")[1]
    assert int(inst.answer) == ops[kind](x, y) > 0
    assert 5 <= y <= 20 and 5 <= x <= 20  # Russian genitive plural throughout
    # The English solution ends in '#### N' and our extractor reads N from it.
    assert answers.extract_final_answer(inst.solution_en, "en") == inst.answer


@pytest.mark.parametrize("lang", [x for x in arith.LANGS if x != "en"])
def test_questions_are_in_their_language(lang):
  scores = [langid.language_consistency(i.questions[lang], lang)
            for i in arith.instances(8)]
  assert min(scores) > 0.6, scores


def test_write_split_files_read_back(tmp_path):
  paths = arith.write_split(str(tmp_path), langs=("de", "ja"), n_train=8, n_test=4, seed=1)
  train = readers.read_jsonl(paths["train"])
  test = readers.read_jsonl(paths["test"])
  assert collections.Counter(e.lang for e in train) == {"en": 8, "de": 8, "ja": 8}
  assert collections.Counter(e.lang for e in test) == {"en": 4, "de": 4, "ja": 4}
  assert not {e.id for e in train} & {e.id for e in test}
  refs = read_references_jsonl(paths["train_references"])
  assert sorted(r.id for r in refs) == sorted({e.id for e in train})
  with pytest.raises(ValueError, match="no templates for languages"):
    arith.write_split(str(tmp_path), langs=("xx",))
