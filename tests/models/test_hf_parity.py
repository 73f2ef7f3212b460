"""Logits parity with transformers' PyTorch models on tiny random configs (fp32).

Relative error is max|ours - transformers| / max|transformers| over the compared logits.
"""

import json
import os

import jax
import numpy as np
import pytest
import torch

from pbrl_jax.models import export_hf, from_pretrained
from pbrl_jax.models.sharding import make_mesh
from reference_models import TINY_FAMILIES, rel_err, tiny_hf_model, torch_logits

TOL = 1e-4


def _batch(vocab: int, seed: int = 0):
  """A left-padded batch: row 0 full, rows 1-2 with 5 and 9 pad tokens."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(3, 17))
  valid = np.ones_like(ids)
  valid[1, :5] = 0
  valid[2, :9] = 0
  ids = np.where(valid == 1, ids, 0)
  return ids, valid


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_logits_parity(family, tmp_path):
  model, path = tiny_hf_model(family, tmp_path)
  bundle = from_pretrained(path)
  c = bundle.config
  assert c.tie_word_embeddings == family.endswith("_tied")
  assert ("lm_head" in bundle.params) != c.tie_word_embeddings
  ids, valid = _batch(c.vocab_size)
  # Unpadded.
  ours = np.asarray(bundle.logits(ids))
  ref = torch_logits(model, ids)
  assert ours.shape == ref.shape == (3, 17, c.vocab_size)
  assert rel_err(ours, ref) <= TOL
  # Left-padded: compare the real positions only.
  ours = np.asarray(bundle.logits(ids, valid))
  ref = torch_logits(model, ids, valid)
  real = valid.astype(bool)
  assert rel_err(ours[real], ref[real]) <= TOL
  # A padded row equals the same tokens unpadded.
  alone = np.asarray(bundle.logits(ids[2:3, 9:]))
  assert rel_err(ours[2, 9:], alone[0]) <= TOL


def test_family_features_are_mapped(tmp_path):
  _, path = tiny_hf_model("qwen3", tmp_path)
  c = from_pretrained(path).config
  assert c.qk_norm and c.head_dim == 24 and c.head_dim * c.num_heads != c.hidden_size
  _, path = tiny_hf_model("qwen2", tmp_path)
  b = from_pretrained(path)
  assert b.config.attention_bias and np.abs(np.asarray(b.params["layers"]["attn"]["q_bias"])).max() > 0
  _, path = tiny_hf_model("llama", tmp_path)
  c = from_pretrained(path).config
  assert c.rope_scaling is not None and c.rope_scaling.rope_type == "llama3"


def test_bf16_and_sharded_checkpoint(tmp_path):
  """bf16 safetensors (no numpy dtype in safetensors.numpy) split over an index."""
  model, _ = tiny_hf_model("qwen2", tmp_path)
  model = model.to(torch.bfloat16)
  path = str(tmp_path / "bf16")
  model.save_pretrained(path, max_shard_size="40KB")
  assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
  bundle = from_pretrained(path, dtype="float32")
  ref_model = model.to(torch.float32)
  ids, valid = _batch(bundle.config.vocab_size, 1)
  ours = np.asarray(bundle.logits(ids, valid))
  ref = torch_logits(ref_model, ids, valid)
  assert rel_err(ours[valid == 1], ref[valid == 1]) <= TOL
  bf16 = from_pretrained(path, dtype="bfloat16")
  assert bf16.params["embed"].dtype == jax.numpy.bfloat16
  np.testing.assert_array_equal(
      np.asarray(bf16.params["embed"]).astype(np.float32),
      model.model.embed_tokens.weight.detach().float().numpy())


@pytest.mark.parametrize("family", ["llama", "qwen3_tied", "qwen2"])
def test_export_round_trip(family, tmp_path):
  from transformers import AutoModelForCausalLM
  model, path = tiny_hf_model(family, tmp_path)
  bundle = from_pretrained(path)
  out = str(tmp_path / "export")
  os.makedirs(out)  # an existing directory is replaced atomically
  export_hf(bundle, out, max_shard_bytes=60_000)
  names = set(os.listdir(out))
  assert {"config.json", "generation_config.json", "model.safetensors.index.json"} <= names
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".export")]  # no temp left
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    weight_map = json.load(f)["weight_map"]
  assert ("lm_head.weight" in weight_map) != bundle.config.tie_word_embeddings
  reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids, valid = _batch(bundle.config.vocab_size, 2)
  ref = torch_logits(model, ids, valid)
  again = torch_logits(reloaded, ids, valid)
  assert rel_err(again[valid == 1], ref[valid == 1]) <= TOL
  # And back into ours.
  ours = np.asarray(from_pretrained(out).logits(ids, valid))
  assert rel_err(ours[valid == 1], ref[valid == 1]) <= TOL


def test_mesh_load_places_each_weight_in_its_sharding(tmp_path):
  _, path = tiny_hf_model("qwen3", tmp_path)
  plain = from_pretrained(path)
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  sharded = from_pretrained(path, mesh=mesh)
  q = sharded.params["layers"]["attn"]["q_proj"]  # [L, D, N, H] = (3, 64, 4, 24)
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (3, 32, 2, 24)
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding.mesh.shape == mesh.shape


def test_export_bfloat16(tmp_path):
  import safetensors
  from transformers import AutoModelForCausalLM
  _, path = tiny_hf_model("qwen3", tmp_path)
  bundle = from_pretrained(path)
  out = export_hf(bundle, str(tmp_path / "bf16"), dtype="bfloat16")
  with safetensors.safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
    assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
  reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ours = from_pretrained(out)
  assert ours.params["embed"].dtype == np.float32  # dtype follows the request, not the file
  ids, valid = _batch(bundle.config.vocab_size, 3)
  assert rel_err(ours.logits(ids, valid)[valid == 1],
                 torch_logits(reloaded, ids, valid)[valid == 1]) <= TOL


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tensor_specs_match_decoder_tree(family, tmp_path):
  """The HF mapping covers exactly the decoder's parameters, with the decoder's shapes."""
  from pbrl_jax.models import param_shapes
  from pbrl_jax.models.hf import tensor_specs
  _, path = tiny_hf_model(family, tmp_path)
  config = from_pretrained(path).config
  shapes = param_shapes(config)
  flat = {tuple(k.key for k in p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(shapes)}
  specs = {s.path: ((config.num_layers,) if s.per_layer else ()) + s.shape
           for s in tensor_specs(config)}
  assert specs == flat


def _llama31_8b_rope_config():
  import transformers
  return transformers.LlamaConfig(
      vocab_size=128, hidden_size=4096, intermediate_size=64, num_hidden_layers=1,
      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
      rope_theta=500000.0,
      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "llama31_8b"])
def test_rope_tables_match_transformers(family, tmp_path):
  """RoPE on its own, where the tiny models' near-uniform attention would hide an error.

  Random tiny models attend almost uniformly, so their logits barely depend on positions
  (a 1% change of rope_theta passes the logits test); the rotation tables do.
  """
  from pbrl_jax.models.config import DecoderConfig
  from pbrl_jax.models.decoder import rope_inv_freq, rope_sin_cos
  if family == "llama31_8b":
    hf_config = _llama31_8b_rope_config()
  else:
    model, _ = tiny_hf_model(family, tmp_path)
    hf_config = model.config
  import transformers
  rotary_cls = {"qwen2": transformers.models.qwen2.modeling_qwen2.Qwen2RotaryEmbedding,
                "qwen3": transformers.models.qwen3.modeling_qwen3.Qwen3RotaryEmbedding}.get(
                    family, transformers.models.llama.modeling_llama.LlamaRotaryEmbedding)
  rotary = rotary_cls(config=hf_config)
  ours = DecoderConfig.from_hf_dict(hf_config.to_dict())
  # Frequencies: fp32 on both sides, a few ulps apart at most.
  np.testing.assert_allclose(np.asarray(rope_inv_freq(ours)), rotary.inv_freq.numpy(),
                             rtol=1e-6, atol=0)
  positions = np.array([[0, 1, 2, 17, 31, 64, 200, 255]])
  sin, cos = rope_sin_cos(ours, positions)
  x = torch.zeros((1, 1, ours.head_dim))
  ref_cos, ref_sin = rotary(x, torch.as_tensor(positions))
  # Angles up to 255 rad: an ulp of the frequency moves them by about 6e-5.
  np.testing.assert_allclose(np.asarray(cos), ref_cos.numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(sin), ref_sin.numpy(), rtol=0, atol=1e-4)
