"""Full-size configs: parameter counts from `jax.eval_shape`, nothing allocated."""

import json
import os

import jax
import pytest

from pbrl_jax.models import DecoderConfig, param_shapes
from pbrl_jax.models.decoder import count_params

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "model_configs")


def _formula(c: DecoderConfig) -> int:
  """Parameter count from the architecture: embeddings, L blocks, final norm."""
  d, f, v, h = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
  attn = d * c.num_heads * h * 2 + d * c.num_kv_heads * h * 2  # q, o; k, v
  if c.attention_bias:
    attn += (c.num_heads + 2 * c.num_kv_heads) * h
  if c.qk_norm:
    attn += 2 * h
  block = attn + 3 * d * f + 2 * d
  embeddings = v * d * (1 if c.tie_word_embeddings else 2)
  return embeddings + c.num_layers * block + d


@pytest.mark.parametrize("name,expected,rounded", [
    ("llama31_8b.json", 8_030_261_248, 8.03e9),
    ("qwen3_32b.json", 32_762_123_264, 32.8e9),
])
def test_full_size_param_count(name, expected, rounded):
  with open(os.path.join(CONFIG_DIR, name)) as f:
    config = DecoderConfig.from_hf_dict(json.load(f), source=name, param_dtype="bfloat16")
  shapes = param_shapes(config)  # jax.eval_shape: ShapeDtypeStructs only
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
  n = count_params(shapes)
  assert n == _formula(config) == expected
  digits = 2 if rounded < 1e10 else 1
  assert round(n / 1e9, digits) == round(rounded / 1e9, digits)


def test_full_size_config_facts():
  with open(os.path.join(CONFIG_DIR, "llama31_8b.json")) as f:
    llama = DecoderConfig.from_hf_dict(json.load(f))
  assert (llama.num_layers, llama.num_heads, llama.num_kv_heads, llama.head_dim) == (32, 32, 8, 128)
  assert llama.rope_scaling.rope_type == "llama3" and llama.rope_scaling.factor == 8.0
  assert llama.rope_theta == 500000.0 and llama.eos_token_ids == (128001, 128008, 128009)
  with open(os.path.join(CONFIG_DIR, "qwen3_32b.json")) as f:
    qwen = DecoderConfig.from_hf_dict(json.load(f))
  assert (qwen.num_layers, qwen.num_heads, qwen.num_kv_heads, qwen.head_dim) == (64, 64, 8, 128)
  assert qwen.qk_norm and not qwen.attention_bias and not qwen.tie_word_embeddings
  assert qwen.head_dim * qwen.num_heads != qwen.hidden_size
