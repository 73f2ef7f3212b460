"""Parallel GSM-Symbolic instances: same numbers and same gold answer across languages."""

import collections
import json
import re
import time
import unicodedata

import pytest

import multilingual_gsm_symbolic  # noqa: F401 (missing: the test fails, never skips)

from pbrl_jax.data import gsm_symbolic as g  # pylint: disable=g-import-not-at-top

TEMPLATES = range(0, 12)
LANGS = ("de", "fr", "ja", "es")


def _numbers(text: str, comma_decimal: bool) -> set[str]:
  """Numbers in a question, with the language's separators normalised."""
  if comma_decimal:
    text = re.sub(r"(\d)\.(\d{3})", r"\1\2", text)
    text = re.sub(r"(\d),(\d)", r"\1.\2", text)
  else:
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
  return set(re.findall(r"\d+(?:\.\d+)?", text))


def _gold(solution: str, comma_decimal: bool) -> float:
  """The number on a solution's last `#### N` line, parsed here (not by the builder)."""
  line = [x for x in solution.splitlines() if x.strip().startswith("####")][-1]
  text = line.strip()[4:].strip()
  text = "".join(str(unicodedata.digit(c)) if c.isdigit() else c for c in text
                 if not c.isspace())
  if comma_decimal:
    text = text.replace(".", "").replace(",", ".")
  else:
    text = text.replace(",", "")
  return float(text)


class _Rendered:
  """A stand-in target template: same numbers, renders a fixed solution."""

  def __init__(self, solution: str, shift: int = 0):
    self.solution, self.shift = solution, shift

  def match(self, values, rng):
    del rng
    return dict(values), ""

  def numeric(self, assignment):
    return {k: v + self.shift for k, v in assignment.items()}

  def render(self, assignment, rng):
    del assignment, rng
    return "Frage", self.solution, {}


class _Library:

  def __init__(self, template):
    self.template = template

  def prepared(self, code, t):
    del code, t
    return self.template


@pytest.fixture(scope="module")
def built():
  return g.build_parallel(LANGS, instances_per_template=1, seed=0, templates=TEMPLATES)


def test_pairs_share_gold_and_numbers(built):
  insts, stats = built
  import multilingual_gsm_symbolic as mgs
  by_lang = collections.Counter(i.lang for i in insts)
  for lang in LANGS:
    # Every template of the language in range is accounted for: aligned or dropped by reason.
    code = {"de": "deu", "fr": "fra", "ja": "jpn", "es": "spa"}[lang]
    n_templates = len([t for t in mgs.load_data(code) if t.id_shuffled in TEMPLATES])
    assert sum(stats["langs"][lang].values()) == n_templates, stats["langs"][lang]
    assert stats["langs"][lang]["aligned"] == by_lang[lang]
  # de/fr/ja have all templates: most align; the dropped ones are counted, not silent.
  assert by_lang["de"] >= 9 and by_lang["fr"] >= 9 and by_lang["ja"] >= 8, stats
  for inst in insts:
    # Gold answers parsed here, independently of the builder, agree across the pair.
    assert _gold(inst.solution, inst.code in ("deu", "fra")) == float(inst.answer)
    assert _gold(inst.solution_en, False) == float(inst.answer)
    assert "<<" not in inst.solution_en
    # Every number of the English question appears in the target question.
    en = _numbers(inst.question_en, False)
    tgt = _numbers(inst.question, inst.code in ("deu", "fra"))
    assert en <= tgt, (inst.id, inst.lang, en, tgt)
    assert inst.id.startswith(f"gsm_symbolic/{inst.pivot_code}/{inst.template:04d}/")


def test_a_target_instance_that_disagrees_is_dropped():
  """The builder verifies each rendered target instead of trusting the construction."""
  args = ("deu", "de", "eng", 3, 0, 0, 0, {"x": 42}, "What is x?", "x is 42.\n#### 42", "42")
  inst, why = g._align(_Library(_Rendered("x ist 42.\n#### 42")), *args)
  assert why == "" and inst.answer == "42" and inst.solution.endswith("#### 42")
  inst, why = g._align(_Library(_Rendered("x ist 43.\n#### 43")), *args)
  assert (inst, why) == (None, "answer_mismatch")
  inst, why = g._align(_Library(_Rendered("x ist 42.\n#### 42", shift=1)), *args)
  assert (inst, why) == (None, "value_mismatch")


def test_metric_languages_use_eng_metric(built):
  insts, _ = built
  variants = collections.Counter((i.lang, i.pivot_code) for i in insts)
  assert variants[("de", "eng_metric")] > variants[("de", "eng")]
  assert variants[("fr", "eng_metric")] > variants[("fr", "eng")]


def test_shared_ids_have_one_english_question(built):
  insts, _ = built
  english = collections.defaultdict(set)
  for inst in insts:
    english[inst.id].add((inst.question_en, inst.answer))
  assert all(len(v) == 1 for v in english.values())
  assert len(g.english_questions(insts)) == len(english)


def test_deterministic_and_cached(tmp_path):
  a, _ = g.build_parallel(("pl",), 2, seed=3)
  b, _ = g.build_parallel(("pl",), 2, seed=3)
  assert a == b and len(a) >= 6
  c, _ = g.build_parallel(("pl",), 2, seed=4)
  assert [x.question for x in a] != [x.question for x in c]
  insts, stats = g.load_or_build(str(tmp_path), ("pl",), 2, seed=3)
  assert insts == a
  files = list(tmp_path.glob("gsm_symbolic-*.jsonl"))
  assert len(files) == 1
  head = json.loads(files[0].read_text().splitlines()[0])
  assert head["count"] == len(a) and head["stats"] == stats
  t0 = time.perf_counter()
  again, _ = g.load_or_build(str(tmp_path), ("pl",), 2, seed=3)
  assert again == a and time.perf_counter() - t0 < 1.0


def test_explosive_template_is_bounded():
  # deu template 47 exhausts memory when its combinations are enumerated; sampling is bounded.
  t0 = time.perf_counter()
  insts, stats = g.build_parallel(("de",), 1, seed=0, templates=[47], time_budget_s=1.0)
  assert time.perf_counter() - t0 < 30
  assert sum(stats["langs"]["de"].values()) == 1


def test_oracle_references(tmp_path, built):
  insts, _ = built
  path = str(tmp_path / "oracle.jsonl")
  n = g.write_oracle_references(insts, path)
  rows = [json.loads(x) for x in open(path, encoding="utf-8")]
  assert n == len(rows) == len({i.id for i in insts})
  for row in rows:
    assert row["response"].rstrip().endswith(f"#### {row['answer']}")
    assert "<<" not in row["response"]


def test_hash_answer_locales():
  assert g.hash_answer("x\n#### 2,5", "deu") == "2.5"
  assert g.hash_answer("x\n#### 1,000", "eng") == "1000"
  assert g.hash_answer("x\n#### १२", "hin") == "12"
  assert g.hash_answer("no answer line", "eng") is None
