"""The Grain training pipeline: join, batches, determinism, exact resume, hosts, Orbax."""

import collections
import itertools

import numpy as np
import pytest

import grain

from pbrl_jax.data import pipeline
from pbrl_jax.data.pivot import Reference
from pbrl_jax.data.records import DataError, Example
from pbrl_jax.data.tokenize import chat_text, user_message

import data_testlib as lib

N_IDS = 20
# Prompts here take 74-207 tokens, so batches land in more than one bucket.
BUCKETS = (96, 160, 224, 288)


def _examples():
  out = []
  for lang, word in (("de", "Äpfel"), ("fr", "pommes")):
    for i in range(N_IDS):
      out.append(Example(f"id{i:02d}", lang, f"Frage {i}: {i} {word} " + "x" * (i * 7),
                         str(i)))
  return out


def _references():
  refs = {}
  for i in range(N_IDS):
    resp = f"Reasoning {i}\n#### {i}"
    refs[f"id{i:02d}"] = Reference(
        f"id{i:02d}", f"Question {i}", resp, f"Reasoning {i}", str(i), str(i),
        {"enc/response": lib.fake_embed([resp], 8, "r")[0],
         "enc/reasoning": lib.fake_embed([resp], 8, "s")[0]})
  return refs


@pytest.fixture(scope="module")
def tok():
  return lib.tiny_tokenizer()


@pytest.fixture(scope="module")
def elements():
  els, stats = pipeline.join(_examples(), _references())
  assert stats == {"joined": 2 * N_IDS, "missing_reference": 0}
  return els


def _opts(**kw):
  kw.setdefault("global_batch_size", 4)
  kw.setdefault("buckets", BUCKETS)
  return pipeline.PipelineOptions(**kw)


def _take(it, n):
  return list(itertools.islice(it, n))


def _key(batch):
  return (tuple(batch["ids"]), tuple(batch["langs"]), batch["prompt_tokens"].tobytes(),
          batch["prompt_valid"].tobytes(), batch["ref_emb"]["enc/response"].tobytes())


def test_join_missing_reference():
  refs = _references()
  del refs["id03"]
  with pytest.raises(DataError, match="no pivot reference for id 'id03'"):
    pipeline.join(_examples(), refs)
  els, stats = pipeline.join(_examples(), refs, missing_reference="skip")
  assert stats == {"joined": 2 * N_IDS - 2, "missing_reference": 2}
  assert "id03" not in {e["id"] for e in els}


def test_batch_contents(tok, elements):
  loader = pipeline.make_loader(elements, tok, _opts(group_size=3))
  refs = _references()
  by_key = {(e["id"], e["lang"]): e for e in elements}
  seen_p = set()
  for batch in _take(iter(loader), 10):
    b, p = batch["prompt_tokens"].shape
    assert b == 4 and p in BUCKETS and batch["group_size"] == 3
    assert batch["prompt_tokens"].dtype == np.int32 and batch["prompt_valid"].dtype == bool
    seen_p.add(p)
    for row, (ex_id, lang) in enumerate(zip(batch["ids"], batch["langs"])):
      e = by_key[(ex_id, lang)]
      want = tok(chat_text(tok, user_message(e["question"])), add_special_tokens=False)
      want = want["input_ids"]
      n = int(batch["prompt_lengths"][row])
      assert n == len(want)
      # Left padding: real tokens at the end, padding (never attended) before them.
      np.testing.assert_array_equal(batch["prompt_tokens"][row, p - n:], want)
      assert not batch["prompt_valid"][row, :p - n].any() and batch["prompt_valid"][row,
                                                                                  p - n:].all()
      assert (batch["prompt_tokens"][row, :p - n] == tok.pad_token_id).all()
      np.testing.assert_array_equal(batch["ref_emb"]["enc/response"][row],
                                    refs[ex_id].embeddings["enc/response"])
      assert batch["reference"][row] == refs[ex_id].response
      assert batch["reference_answer"][row] == str(int(ex_id[2:]))
      assert batch["gold"][row] == str(int(ex_id[2:]))
    # The smallest bucket that fits the longest prompt.
    longest = int(batch["prompt_lengths"].max())
    assert p == min(x for x in BUCKETS if x >= longest)
  assert len(seen_p) >= 2  # prompts of different lengths land in different buckets


def test_prompt_too_long(tok, elements):
  with pytest.raises(DataError, match=r"prompt of id 'id\d\d' .* more than the largest"):
    pipeline.make_loader(elements, tok, _opts(buckets=(16,), overlong="error"))
  # Prompts here take 74-207 tokens: with 160 as the largest bucket the long ones are dropped
  # before training starts, counted, and never reach a batch.
  kept, stats = pipeline.drop_overlong(elements, tok, _opts(buckets=(96, 160)))
  assert 0 < stats["overlong"] < len(elements) and len(kept) + stats["overlong"] == len(elements)
  assert stats["max_length"] > 160
  loader = pipeline.make_loader(elements, tok, _opts(buckets=(96, 160), num_epochs=1,
                                                     drop_remainder=False, shuffle=False))
  seen = [(i, l) for b in loader for i, l in zip(b["ids"], b["langs"])]
  assert sorted(seen) == sorted((e["id"], e["lang"]) for e in kept)


def test_deterministic(tok, elements):
  a = [_key(b) for b in _take(iter(pipeline.make_loader(elements, tok, _opts(seed=5))), 15)]
  b = [_key(b) for b in _take(iter(pipeline.make_loader(elements, tok, _opts(seed=5))), 15)]
  c = [_key(b) for b in _take(iter(pipeline.make_loader(elements, tok, _opts(seed=6))), 15)]
  assert a == b and a != c


def _resume_check(tok, elements, worker_count):
  opts = _opts(seed=1, worker_count=worker_count, worker_buffer_size=1)
  k = 3
  it = iter(pipeline.make_loader(elements, tok, opts))
  _take(it, k)
  state = it.get_state()
  reference = [_key(b) for b in _take(it, 20)]
  it2 = iter(pipeline.make_loader(elements, tok, opts))
  it2.set_state(state)
  resumed = [_key(b) for b in _take(it2, 20)]
  assert resumed == reference
  # Crossing an epoch boundary (40 elements / 4 = 10 batches per epoch) is included.
  assert k + 20 > 2 * N_IDS // 4


def test_resume_exact_in_process(tok, elements):
  _resume_check(tok, elements, 0)


@pytest.mark.slow
def test_resume_exact_with_workers(tok, elements):
  _resume_check(tok, elements, 2)


def test_two_hosts_see_every_record_once(tok, elements):
  seen = collections.Counter()
  per_host = []
  for host in range(2):
    opts = _opts(global_batch_size=4, num_epochs=1, drop_remainder=False, seed=2)
    loader = pipeline.make_loader(elements, tok, opts, shard_index=host, shard_count=2)
    ids = []
    for batch in loader:
      assert len(batch["ids"]) <= 2
      ids += list(zip(batch["ids"], batch["langs"]))
    per_host.append(set(ids))
    seen.update(ids)
  assert set(seen) == {(e["id"], e["lang"]) for e in elements}
  assert set(seen.values()) == {1}
  assert not per_host[0] & per_host[1]


def test_orbax_checkpoint_roundtrip(tok, elements, tmp_path):
  import orbax.checkpoint as ocp
  opts = _opts(seed=3)
  it = iter(pipeline.make_loader(elements, tok, opts))
  _take(it, 4)
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  reference = [_key(b) for b in _take(it, 5)]
  it2 = iter(pipeline.make_loader(elements, tok, opts))
  mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  assert [_key(b) for b in _take(it2, 5)] == reference
  mngr.close()


def test_repad(tok, elements):
  batch = next(iter(pipeline.make_loader(elements, tok, _opts())))
  p = batch["prompt_tokens"].shape[1]
  wide = pipeline.repad(batch, p + 32, tok.pad_token_id)
  assert wide["prompt_tokens"].shape[1] == p + 32
  np.testing.assert_array_equal(wide["prompt_tokens"][:, 32:], batch["prompt_tokens"])
  assert not wide["prompt_valid"][:, :32].any()
  with pytest.raises(ValueError):
    pipeline.repad(batch, p - 1, 0)
