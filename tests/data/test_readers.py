"""Readers on fixtures in the published layouts, including bad input."""

import csv
import os

import pytest

from pbrl_jax.data import readers
from pbrl_jax.data.records import DataError, ErrorCounter, Example, normalise_lang

import data_testlib as lib


def test_generic_jsonl(tmp_path):
  p = lib.write_jsonl(str(tmp_path / "q.jsonl"), [
      {"id": "a", "lang": "de", "question": "Wie viel?", "answer": 3},
      {"id": 7, "lang": "deu", "question": "Noch?"},
      "",
      {"id": "c", "lang": "en", "question": "Which?", "answer": "B", "choices": ["x", "y"]},
      {"id": "d", "lang": "fr", "question": "Combien?", "answer": 2.5},
  ])
  got = readers.read_jsonl(p)
  assert got == [Example("a", "de", "Wie viel?", "3"), Example("7", "de", "Noch?"),
                 Example("c", "en", "Which?", "B", ("x", "y")),
                 Example("d", "fr", "Combien?", "2.5")]
  p = lib.write_jsonl(str(tmp_path / "nan.jsonl"),
                      ['{"id": "e", "lang": "fr", "question": "Q?", "answer": NaN}'])
  with pytest.raises(DataError, match=r"nan.jsonl:1 field 'answer': not a finite number"):
    readers.read_jsonl(p)


@pytest.mark.parametrize("line,field,reason", [
    ('{"id": "a", "lang": "de", "question": "ok"', None, "bad_json"),
    ('{"id": "a", "lang": "de"}', "question", "missing_field"),
    ('{"id": "a", "lang": "de", "question": 5}', "question", "wrong_type"),
    ('{"id": "a", "lang": "xx", "question": "q"}', "lang", "unknown_lang"),
    ('{"id": "a", "lang": "de", "question": "q", "choices": "AB"}', "choices", "wrong_type"),
    ('[1, 2]', None, "wrong_type"),
])
def test_generic_jsonl_bad_line(tmp_path, line, field, reason):
  good = '{"id": "g", "lang": "fr", "question": "bon"}'
  p = lib.write_jsonl(str(tmp_path / "bad.jsonl"), [good, line, good.replace('"g"', '"h"')])
  with pytest.raises(DataError) as e:
    readers.read_jsonl(p)
  msg = str(e.value)
  assert f"{p}:2" in msg
  if field:
    assert f"field '{field}'" in msg
  errors = ErrorCounter("skip")
  got = readers.read_jsonl(p, errors=errors)
  assert [x.id for x in got] == ["g", "h"]
  assert errors.skipped == {reason: 1}


def test_duplicate_ids_and_utf8_and_empty(tmp_path):
  p = lib.write_jsonl(str(tmp_path / "dup.jsonl"), [
      {"id": "a", "lang": "de", "question": "x"}, {"id": "a", "lang": "de", "question": "y"}])
  with pytest.raises(DataError, match=r"dup.jsonl:2 field 'id'.*duplicate"):
    readers.read_jsonl(p)
  p = lib.write_bytes(str(tmp_path / "latin1.jsonl"),
                      b'{"id": "a", "lang": "de", "question": "ok"}\n'
                      b'{"id": "b", "lang": "de", "question": "Gr\xfc\xdfe"}\n')
  with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8"):
    readers.read_jsonl(p)
  errors = ErrorCounter("skip")
  assert [x.id for x in readers.read_jsonl(p, errors=errors)] == ["a"]
  assert errors.skipped == {"not_utf8": 1}
  p = lib.write_bytes(str(tmp_path / "empty.jsonl"), b"\n  \n")
  with pytest.raises(DataError, match="empty.jsonl: file is empty"):
    readers.read_jsonl(p, on_error="skip")


def test_mgsm_tsv(tmp_path):
  root = lib.mgsm_dir(str(tmp_path / "mgsm"), n=3)
  de = readers.read_mgsm_tsv(readers.mgsm_path(root, "de"), "de")
  assert de[1] == Example("mgsm/1", "de", "Q1: 1 + 2 Äpfel?", "3")
  p = lib.write_bytes(str(tmp_path / "mgsm_fr.tsv"),
                      "Q0?\t1,000\nQ1 sans réponse\nQ2?\tdeux\nQ3?\t2.50\n".encode())
  with pytest.raises(DataError, match=r"mgsm_fr.tsv:2: expected 2 tab-separated"):
    readers.read_mgsm_tsv(p, "fr")
  errors = ErrorCounter("skip")
  got = readers.read_mgsm_tsv(p, "fr", errors=errors)
  # Ids keep the line index of the parallel file even when a line is skipped.
  assert [(x.id, x.answer) for x in got] == [("mgsm/0", "1000"), ("mgsm/3", "2.5")]
  assert errors.skipped == {"bad_columns": 1, "bad_answer": 1}
  with pytest.raises(ValueError, match="unknown language"):
    readers.read_mgsm_tsv(p, "zz")


def _mmlu_rows():
  rows = []
  for k in range(3):
    row = {"question_id": k, "question": f"Frage {k}?", "answer": "BCA"[k],
           "answer_index": "120"[k], "cot_content": "", "category": "math", "src": "x"}
    for j in range(10):
      row[f"option_{j}"] = f"opt{j}" if j < 4 else ("N/A" if j == 4 else "")
    rows.append(row)
  return rows


def _write_csv(path, rows):
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return path


def test_mmlu_prox_csv_and_jsonl(tmp_path):
  rows = _mmlu_rows()
  rows[1]["question"] = "Mehrzeilige\nFrage?"  # a quoted field spanning lines
  for path in (_write_csv(str(tmp_path / "de.csv"), rows),
               lib.write_jsonl(str(tmp_path / "de.jsonl"), rows)):
    got = readers.read_mmlu_prox(path, "de")
    assert [x.id for x in got] == ["mmlu_prox/0", "mmlu_prox/1", "mmlu_prox/2"]
    assert got[0].choices == ("opt0", "opt1", "opt2", "opt3") and got[0].answer == "B"
    assert got[1].question == "Mehrzeilige\nFrage?"


@pytest.mark.parametrize("mutate,field,reason", [
    (lambda r: r.update(answer="Z"), "answer", "bad_answer"),
    (lambda r: r.update(answer="E"), "answer", "bad_answer"),  # only 4 options
    (lambda r: r.update(answer_index="3"), "answer_index", "bad_answer"),
    (lambda r: r.pop("option_3") and None, "option_3", "missing_field"),
])
def test_mmlu_prox_bad_rows(tmp_path, mutate, field, reason):
  rows = _mmlu_rows()
  mutate(rows[2])
  p = lib.write_jsonl(str(tmp_path / "fr.jsonl"), rows)
  with pytest.raises(DataError) as e:
    readers.read_mmlu_prox(p, "fr")
  assert f"fr.jsonl:3 field '{field}'" in str(e.value)
  errors = ErrorCounter("skip")
  assert len(readers.read_mmlu_prox(p, "fr", errors=errors)) == 2
  assert errors.skipped == {reason: 1}


def test_mmlu_prox_csv_extra_column(tmp_path):
  p = _write_csv(str(tmp_path / "ja.csv"), _mmlu_rows())
  with open(p, "a", encoding="utf-8") as f:
    f.write("9,Q?,A,B,C,D,,,,,,,A,0,,m,x,EXTRA\n")
  with pytest.raises(DataError, match=r"ja.csv:5: more columns"):
    readers.read_mmlu_prox(p, "ja")


def test_language_codes():
  assert normalise_lang("deu") == "de"
  assert normalise_lang("eng_metric") == "en"
  assert normalise_lang("zh-CN") == "zh"
  assert normalise_lang("swh") == "swh"
  with pytest.raises(ValueError):
    normalise_lang("klingon")


def test_canonical_number():
  assert readers.canonical_number("1,000") == "1000"
  assert readers.canonical_number("-18.50") == "-18.5"
  for bad in ("1,00", "abc", "1.2.3", ""):
    with pytest.raises(ValueError):
      readers.canonical_number(bad)


def test_sources_mgsm_and_jsonl(tmp_path):
  from configs import data_defaults
  from pbrl_jax.data import sources
  cfg = data_defaults.get_data_config()
  cfg.source = "mgsm"
  cfg.path = lib.mgsm_dir(str(tmp_path / "m"), n=4)
  cfg.langs = ("de", "fr")
  src = sources.load_source(cfg, str(tmp_path))
  assert len(src.targets) == 8 and {e.lang for e in src.targets} == {"de", "fr"}
  assert [p.id for p in src.pivot] == [f"mgsm/{i}" for i in range(4)]
  assert src.pivot[2].gold == "5" and len(src.sha256) == 64
  cfg.langs = ("de", "xx")
  with pytest.raises(DataError, match="config data.langs"):
    sources.load_source(cfg, str(tmp_path))
  os.remove(os.path.join(cfg.path, "mgsm_fr.tsv"))
  cfg.langs = ("fr",)
  with pytest.raises(DataError, match="mgsm_fr.tsv: missing MGSM file"):
    sources.load_source(cfg, str(tmp_path))


def test_one_reader_for_training_sources_and_evaluation(tmp_path):
  """`pbrl-train`'s source and `pbrl-eval`'s dataset read the same files the same way."""
  from configs import data_defaults
  from pbrl_jax import evaluate
  from pbrl_jax.data import sources
  rows = _mmlu_rows()
  os.makedirs(tmp_path / "mmlu")
  for lang in ("en", "de"):
    _write_csv(str(tmp_path / "mmlu" / f"{lang}.csv"), rows)
  pattern = str(tmp_path / "mmlu" / "{lang}.csv")
  by_dir = readers.read_dataset("mmlu_prox", str(tmp_path / "mmlu"), ["de"])
  assert by_dir == readers.read_dataset("mmlu_prox", pattern, ["de"])
  assert [x.id for x in by_dir["de"]] == ["mmlu_prox/0", "mmlu_prox/1", "mmlu_prox/2"]
  cfg = data_defaults.get_data_config()
  cfg.source, cfg.path, cfg.langs = "mmlu_prox", pattern, ("de",)
  src = sources.load_source(cfg, str(tmp_path))
  spec = evaluate.DatasetSpec(kind="mmlu_prox", path=str(tmp_path / "mmlu"), langs=("de",))
  assert src.targets == evaluate.load_dataset(spec, str(tmp_path)) == by_dir["de"]
  mgsm = lib.mgsm_dir(str(tmp_path / "m"), n=3)
  assert sorted(readers.read_dataset("mgsm", mgsm, [])) == ["de", "en", "fr"]
  with pytest.raises(DataError, match="name its languages"):
    readers.read_dataset("mmlu_prox", pattern, [])
  with pytest.raises(DataError, match=r"fr\.csv: missing MMLU-ProX file for language 'fr'"):
    readers.read_dataset("mmlu_prox", pattern, ["fr"])
