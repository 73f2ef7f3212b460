"""pbrl-pivot's build() on gsm_symbolic: oracle import, model path wiring, join into batches."""

import json
import os

import numpy as np
import pytest

import multilingual_gsm_symbolic  # noqa: F401 (missing: the test fails, never skips)

from configs import data_defaults  # pylint: disable=g-import-not-at-top
from pbrl_jax import pivot_step
from pbrl_jax.data import pipeline, pivot, sources

import data_testlib as lib

ENCODERS = {"fake": lambda texts: lib.fake_embed(texts, 8)}


def _config():
  c = data_defaults.get_config()
  c.data.langs = ("de", "ja")
  c.data.gsm_symbolic.templates = (0, 1, 2, 3, 4, 5)
  c.pivot.shard_size = 4
  return c


def test_oracle_end_to_end(tmp_path):
  c = _config()
  workdir = str(tmp_path)
  m = pivot_step.build(c, workdir, oracle=True, encoders=ENCODERS)
  assert m["pivot_model"] == "oracle" and m["prompt_template"] is None
  # The oracle answers are the gold answers: nothing is filtered.
  assert m["counts"]["references"] == m["counts"]["questions"]
  assert m["filter"]["dropped_wrong_answer"] == 0 and m["filter"]["kept"] > 0
  with open(os.path.join(workdir, "oracle_references.jsonl"), encoding="utf-8") as f:
    assert len(f.readlines()) == m["counts"]["questions"]
  refs = pivot.load_references(pivot.reference_dir(workdir))
  src = sources.load_source(c.data, workdir)  # from the workdir cache now
  els, stats = pipeline.join(src.targets, refs)
  assert stats["missing_reference"] == 0 and {e["lang"] for e in els} == {"de", "ja"}
  for e in els:
    ref = refs[e["id"]]
    assert e["gold"] == ref.answer == ref.gold
    assert e["reference"].rstrip().endswith(f"#### {e['gold']}")
    assert e["reference_reasoning"] and "####" not in e["reference_reasoning"]
  tok = lib.tiny_tokenizer()
  opts = pipeline.PipelineOptions(global_batch_size=4, buckets=(256, 512, 1024, 2048))
  batch = next(iter(pipeline.make_loader(els, tok, opts)))
  assert batch["ref_emb"]["fake/response"].shape == (4, 8)
  np.testing.assert_array_equal(batch["ref_emb"]["fake/reasoning"][0],
                                lib.fake_embed([refs[batch["ids"][0]].reasoning], 8)[0])
  # Re-running resumes: everything verifies, nothing is rebuilt.
  assert pivot_step.build(c, workdir, oracle=True, encoders=ENCODERS) == m


def test_model_path_wiring(tmp_path, monkeypatch):
  seen = []

  def fake_responder(pivot_cfg):
    def respond(questions):
      seen.extend(questions)
      return ["I think.\n#### 0" for _ in questions]
    return respond, "fake-model"

  monkeypatch.setattr(pivot_step, "pivot_responder", fake_responder)
  c = _config()
  m = pivot_step.build(c, str(tmp_path), encoders=ENCODERS)
  assert m["pivot_model"] == "fake-model" and m["prompt_template"] == c.pivot.prompt_template
  assert len(seen) == m["counts"]["questions"]
  # Wrong answers are filtered out and counted (unless a gold answer happens to be 0).
  assert m["filter"]["dropped_wrong_answer"] + m["counts"]["references"] == len(seen)
  assert m["filter"]["dropped_wrong_answer"] > 0


def test_import_unknown_ids_and_bad_file(tmp_path):
  c = _config()
  refs = lib.write_jsonl(str(tmp_path / "r.jsonl"), ['{"id": "x", "question": "Q"'])
  with pytest.raises(Exception, match=r"r.jsonl:1: malformed JSON"):
    pivot_step.build(c, str(tmp_path / "w"), references=refs, encoders=ENCODERS)
  with open(refs, "w", encoding="utf-8") as f:
    f.write(json.dumps({"id": "other/1", "question": "Q?", "response": "R\n#### 1"}) + "\n")
  m = pivot_step.build(c, str(tmp_path / "w2"), references=refs, encoders=ENCODERS)
  assert m["counts"] == {"questions": 1, "references": 1}
