"""Helpers for the sampler tests: tiny configs, sharpened random params, ragged prompts."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from pbrl_jax.models import DecoderConfig, init_params

# Small configs covering the family: MHA, GQA, q/k/v biases, qwen3 q/k norm with
# head_dim != hidden/heads, tied embeddings.
TINY_CONFIGS = {
    "llama_mha": DecoderConfig(model_type="llama", vocab_size=97, hidden_size=32,
                               intermediate_size=48, num_layers=2, num_heads=4,
                               num_kv_heads=4, head_dim=8, eos_token_ids=(2,),
                               pad_token_id=0, max_position_embeddings=512),
    "llama_gqa_tied": DecoderConfig(model_type="llama", vocab_size=97, hidden_size=32,
                                    intermediate_size=48, num_layers=2, num_heads=4,
                                    num_kv_heads=2, head_dim=8, tie_word_embeddings=True,
                                    eos_token_ids=(2,), pad_token_id=0,
                                    max_position_embeddings=512),
    "qwen2_bias": DecoderConfig(model_type="qwen2", vocab_size=97, hidden_size=32,
                                intermediate_size=48, num_layers=2, num_heads=4,
                                num_kv_heads=2, head_dim=8, attention_bias=True,
                                eos_token_ids=(2,), pad_token_id=0,
                                max_position_embeddings=512),
    "qwen3_qknorm": DecoderConfig(model_type="qwen3", vocab_size=97, hidden_size=32,
                                  intermediate_size=48, num_layers=2, num_heads=4,
                                  num_kv_heads=1, head_dim=12, qk_norm=True,
                                  eos_token_ids=(2,), pad_token_id=0,
                                  max_position_embeddings=512),
}


def random_params(config: DecoderConfig, seed: int = 0, scale: float = 1.0) -> Any:
  """init_params with weights rescaled (random init is near-uniform; scale sharpens it)."""
  params = init_params(config, jax.random.PRNGKey(seed))
  def rescale(path, x):
    name = jax.tree_util.keystr(path)
    if "norm" in name:  # make norms non-trivial so a mask/position bug cannot hide
      return x + 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 1), x.shape, x.dtype)
    return x * scale
  return jax.tree_util.tree_map_with_path(rescale, params)


def ragged_prompts(rng: np.random.Generator, batch: int, max_len: int, vocab: int,
                   min_len: int = 1) -> list[list[int]]:
  """Random prompts of different lengths using ids >= 3 (no pad/eos)."""
  return [rng.integers(3, vocab, size=int(rng.integers(min_len, max_len + 1))).tolist()
          for _ in range(batch)]
