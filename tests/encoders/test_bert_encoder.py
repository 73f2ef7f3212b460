"""Flax BERT / XLM-R encoders against sentence-transformers and transformers."""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from pbrl_jax.models.encoders import bert
from pbrl_jax.rewards.encoders import load_encoder, minilm_path

SENTENCES = [
    "The train leaves the station at nine in the morning.",
    "My sister bought three apples and two oranges at the market.",
    "A rectangle has a length of 8 meters and a width of 5 meters.",
    "Short.",
    "The doctor told him to drink more water and sleep longer, because he looked tired.",
    "Numbers like 1,234.5 and 42 should tokenize fine!",
]


def _assert_vectors_close(got, theirs, rtol=1e-4):
  """Element values (not only directions) and norms within rtol of the reference's."""
  got, theirs = np.asarray(got, np.float64), np.asarray(theirs, np.float64)
  rel = np.abs(got - theirs).max(axis=-1) / np.abs(theirs).max(axis=-1)
  assert rel.max() <= rtol, rel
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(theirs, axis=-1),
                             rtol=rtol)


def test_minilm_matches_sentence_transformers():
  import sentence_transformers as st
  path = minilm_path()
  ours = load_encoder("hf:all-minilm-l6-v2")
  assert ours.config.pooling == "mean" and ours.max_tokens == 256
  model = st.SentenceTransformer(path, device="cpu")
  theirs = model.encode(SENTENCES, convert_to_numpy=True)
  got = ours.encode(SENTENCES, batch_size=4)
  cos = np.sum(got * theirs, axis=-1) / np.linalg.norm(theirs, axis=-1)
  assert cos.min() >= 0.9999, cos
  _assert_vectors_close(got, theirs)


def _tiny_xlmr(tmp_path):
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.XLMRobertaConfig(
      vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=80, type_vocab_size=1, pad_token_id=1)
  model = transformers.XLMRobertaModel(config, add_pooling_layer=False).eval()
  with torch.no_grad():  # random LayerNorm and bias values so every tensor matters
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(tmp_path, safe_serialization=True)
  return torch, model


def test_tiny_xlmr_module_matches_transformers(tmp_path):
  torch, model = _tiny_xlmr(tmp_path)
  import json
  with open(os.path.join(tmp_path, "config.json")) as f:
    config = bert.BertConfig.from_hf(json.load(f), str(tmp_path))
  assert config.roberta_positions and config.max_tokens == 80 - 2
  params = bert.params_from_state_dict(bert._read_state_dict(str(tmp_path)), config)
  rng = np.random.default_rng(0)
  lengths = [9, 4, 12]
  ids = np.full((3, 16), config.pad_token_id, np.int64)
  mask = np.zeros((3, 16), np.int64)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(3, 30522, n)
    mask[i, :n] = 1
  with torch.no_grad():
    hidden = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
                   ).last_hidden_state.numpy()
  pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  want = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
  got = bert.BertEncoderModule(config).apply(
      {"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
      jnp.zeros(ids.shape, jnp.int32))
  cos = np.sum(np.asarray(got) * want, axis=-1)
  assert cos.min() >= 0.9999, cos
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  _assert_vectors_close(got, want)


def test_tiny_xlmr_directory_end_to_end(tmp_path):
  torch, model = _tiny_xlmr(tmp_path)
  # Any local tokenizer works for the loader; borrow MiniLM's WordPiece files.
  for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"):
    shutil.copy(os.path.join(minilm_path(), name), tmp_path / name)
  enc = load_encoder(f"hf:{tmp_path}")
  got = enc.encode(SENTENCES[:3])
  for i, text in enumerate(SENTENCES[:3]):
    ids = enc.tokenizer(text)["input_ids"]
    with torch.no_grad():
      h = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy().mean(0)
    assert float(got[i] @ (h / np.linalg.norm(h))) >= 0.9999
    _assert_vectors_close(got[i:i + 1], (h / np.linalg.norm(h))[None])


def test_cls_pooling_and_bad_config(tmp_path):
  path = tmp_path / "st"
  shutil.copytree(minilm_path(), path)
  with open(path / "1_Pooling" / "config.json", "w") as f:
    f.write('{"word_embedding_dimension": 384, "pooling_mode_cls_token": true}')
  enc = load_encoder(f"hf:{path}")
  assert enc.config.pooling == "cls"
  import sentence_transformers as st
  theirs = st.SentenceTransformer(str(path), device="cpu").encode(SENTENCES[:2])
  got = enc.encode(SENTENCES[:2])
  cos = np.sum(got * theirs, axis=-1) / np.linalg.norm(theirs, axis=-1)
  assert cos.min() >= 0.9999
  _assert_vectors_close(got, theirs)
  with pytest.raises(ValueError, match="model_type"):
    bert.BertConfig.from_hf({"model_type": "gpt2"}, "x")
