"""Pivot reference shards: build, manifest, filter statistics, verify, resume, hosts."""

import json
import os

import numpy as np
import pytest

from pbrl_jax.data import pivot
from pbrl_jax.data.records import DataError

import data_testlib as lib

ENCODERS = {"fake": lambda texts: lib.fake_embed(texts, 8, "a"),
            "fake2": lambda texts: lib.fake_embed(texts, 4, "b")}
INFO = {"source": "unit", "source_sha256": "0" * 64, "pivot_model": "imported",
        "prompt_template": None}


def _items(n=10):
  out = []
  for i in range(n):
    gold = None if i == 9 else str(i)
    # Items 3 and 6 answer wrongly, item 8 has no final answer.
    ans = {3: "99", 6: "-1"}.get(i, str(i))
    resp = f"Reasoning {i}.\nStep two." if i == 8 else f"Reasoning {i}.\n#### {ans}"
    out.append(pivot.PivotItem(f"q{i:02d}", f"Question {i}?", resp, gold))
  return out


def _build(out_dir, items, **kw):
  kw.setdefault("encoders", ENCODERS)
  kw.setdefault("info", INFO)
  kw.setdefault("shard_size", 4)
  kw.setdefault("filter_correct", True)
  return pivot.build_references(items, out_dir, **kw)


def test_build_filter_and_load(tmp_path):
  out = str(tmp_path / "pivot")
  m = _build(out, _items())
  assert m["counts"] == {"questions": 10, "references": 7}
  assert m["filter"] == {"filter_correct": True, "kept": 7, "dropped_wrong_answer": 2,
                         "dropped_no_answer": 1, "unchecked_no_gold": 1}
  assert m["encoders"] == {"fake": 8, "fake2": 4}
  assert [s["file"] for s in m["shards"]] == [f"refs-{i:05d}-of-00003.arrayrecord"
                                              for i in range(3)]
  assert m["format_version"] == pivot.FORMAT_VERSION and m["source_sha256"] == "0" * 64
  refs = pivot.load_references(out)
  assert set(refs) == {"q00", "q01", "q02", "q04", "q05", "q07", "q09"}
  r = refs["q04"]
  assert r.reasoning == "Reasoning 4." and r.answer == "4" and r.gold == "4"
  np.testing.assert_array_equal(r.embeddings["fake/response"],
                                lib.fake_embed([r.response], 8, "a")[0])
  np.testing.assert_array_equal(r.embeddings["fake2/reasoning"],
                                lib.fake_embed([r.reasoning], 4, "b")[0])
  assert r.embeddings["fake/response"].dtype == np.float32


def test_the_answer_embedding_is_the_rewards_answer_segment(tmp_path):
  from pbrl_jax.rewards import score
  out = str(tmp_path / "pivot")
  _build(out, _items(), filter_correct=False, embed_fields=pivot.EMBED_FIELDS)
  refs = pivot.load_references(out)
  assert refs["q08"].answer is None  # no final answer: the answer part is embedded
  for r in refs.values():
    segs = score.segments(r.response, "en")
    assert r.answer == score.parse(r.response, "en").final
    for segment, field in score.SEGMENT_FIELDS.items():
      np.testing.assert_array_equal(r.embeddings[f"fake/{field}"],
                                    lib.fake_embed([segs[segment]], 8, "a")[0])


def test_without_filter_keeps_all(tmp_path):
  m = _build(str(tmp_path / "p"), _items(), filter_correct=False)
  assert m["counts"]["references"] == 10 and m["filter"]["kept"] == 10


def test_resume_keeps_finished_and_rebuilds_tampered(tmp_path):
  out = str(tmp_path / "pivot")
  m1 = _build(out, _items())
  paths = [os.path.join(out, s["file"]) for s in m1["shards"]]
  mtimes = [os.stat(p).st_mtime_ns for p in paths]
  assert _build(out, _items()) == m1
  assert [os.stat(p).st_mtime_ns for p in paths] == mtimes
  # A corrupted shard no longer matches its marker: rebuilt, the rest kept.
  with open(paths[1], "r+b") as f:
    f.seek(20)
    f.write(b"\xff\xff")
  with pytest.raises(DataError, match="sha256 differs"):
    pivot.load_references(out)
  m3 = _build(out, _items())
  assert m3 == m1
  assert os.stat(paths[0]).st_mtime_ns == mtimes[0] and os.stat(paths[2]).st_mtime_ns == mtimes[2]
  # A shard without its marker (killed between rename and marker) is rebuilt too.
  os.remove(paths[2] + ".done")
  os.remove(os.path.join(out, pivot.MANIFEST))
  assert _build(out, _items()) == m1


def test_changed_inputs_rebuild_everything(tmp_path):
  out = str(tmp_path / "pivot")
  _build(out, _items())
  items = _items()
  items[0] = pivot.PivotItem("q00", "Question 0?", "Other.\n#### 0", "0")
  m = _build(out, items)
  assert pivot.load_references(out)["q00"].response == "Other.\n#### 0"
  m2 = _build(out, _items(), shard_size=5)  # a new layout removes the old shards
  assert len(m2["shards"]) == 2 and m2["fingerprint"] != m["fingerprint"]
  assert sorted(f for f in os.listdir(out) if f.endswith(".arrayrecord")) == [
      "refs-00000-of-00002.arrayrecord", "refs-00001-of-00002.arrayrecord"]


def test_two_hosts(tmp_path):
  out = str(tmp_path / "pivot")
  assert _build(out, _items(), process_index=1, process_count=2) is None
  assert sorted(f for f in os.listdir(out) if f.endswith(".arrayrecord")) == [
      "refs-00001-of-00003.arrayrecord"]
  m = _build(out, _items(), process_index=0, process_count=2, wait_for_hosts_s=5)
  single = _build(str(tmp_path / "single"), _items())
  assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in single["shards"]]


def test_model_responder_batches(tmp_path):
  calls = []

  def respond(questions):
    calls.append(len(questions))
    return [f"{q} so\n#### {q.split()[1].rstrip('?')}" for q in questions]

  items = [pivot.PivotItem(f"id{i}", f"Question {i}?", None, str(i)) for i in range(7)]
  m = _build(str(tmp_path / "p"), items, respond=respond, batch_size=3)
  assert calls == [3, 1, 3] and m["counts"]["references"] == 7
  with pytest.raises(ValueError, match="no pivot model"):
    _build(str(tmp_path / "q"), items)


def test_read_references_jsonl(tmp_path):
  p = lib.write_jsonl(str(tmp_path / "refs.jsonl"), [
      {"id": "a", "question": "Q?", "response": "R\n#### 1", "answer": 1},
      {"id": "b", "question": "Q?"},
      {"id": "a", "question": "Q?", "response": "again"},
  ])
  with pytest.raises(DataError, match=r"refs.jsonl:2 field 'response': missing field"):
    pivot.read_references_jsonl(p)
  from pbrl_jax.data.records import ErrorCounter
  errors = ErrorCounter("skip")
  got = pivot.read_references_jsonl(p, errors=errors)
  assert got == [pivot.PivotItem("a", "Q?", "R\n#### 1", "1")]
  assert errors.skipped == {"missing_field": 1, "duplicate_id": 1}


def test_record_roundtrip_is_json():
  ref = pivot.Reference("x", "q", "r", "r", "1", None,
                        {"e/response": np.arange(3, dtype=np.float32)})
  data = pivot.encode_reference(ref)
  obj = json.loads(data)  # plain JSON, nothing executable
  assert obj["id"] == "x" and obj["embeddings"]["e/response"]["shape"] == [3]
  back = pivot.decode_reference(data)
  np.testing.assert_array_equal(back.embeddings["e/response"], [0, 1, 2])
