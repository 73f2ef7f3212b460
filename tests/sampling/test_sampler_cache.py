"""Cached decoding == full recomputation; returned log-probs == full-forward log-softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_testlib import TINY_CONFIGS, ragged_prompts, random_params

from pbrl_jax import padding
from pbrl_jax import sampling
from pbrl_jax.models import decoder, logits_fn, lora

ATOL = 1e-4  # fp32 end to end


def _full_logits(params, config, prompt_tokens, prompt_valid, completion, completion_valid):
  """Logits of an uncached forward over [prompt ; completion], at the completion's inputs."""
  tokens = jnp.concatenate([prompt_tokens, completion], axis=1)
  valid = jnp.concatenate([prompt_valid, completion_valid], axis=1)
  logits = logits_fn(params, config, tokens, valid)  # [B,P+M,V]
  p = prompt_tokens.shape[1]
  # Position P-1+n predicts completion token n.
  return logits[:, p - 1:-1]


@pytest.mark.parametrize("per_layer", [False, True], ids=["stacked", "per_layer"])
@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_cached_decode_matches_full_forward_every_step(family, per_layer):
  """Both decode paths: the stacked layers (TPU) and the weights sliced once (CPU)."""
  config = TINY_CONFIGS[family]
  params = random_params(config, seed=1, scale=4.0)
  rng = np.random.default_rng(0)
  p, m = 16, 10
  prompts = ragged_prompts(rng, 3, p, config.vocab_size)
  prompts[0] = prompts[0][:1]  # a one-token prompt: maximal left padding
  tokens, valid = padding.left_pad(prompts, p, config.pad_token_id)
  completion = rng.integers(3, config.vocab_size, size=(3, m)).astype(np.int32)

  step_logits = []
  logits, cache = jax.jit(sampling.prefill, static_argnums=(1, 4))(params, config, tokens,
                                                                    valid, p + m)
  step_logits.append(logits)
  prompt_len = valid.sum(1)
  step = jax.jit(sampling.decode_step, static_argnums=1)
  layers = {"layers": decoder.unstack_layers(params["layers"])} if per_layer else {}
  for t in range(1, m):
    key_valid = np.concatenate([valid, np.broadcast_to(np.arange(m) < t, (3, m))], axis=1)
    logits, cache = step(params, config, completion[:, t - 1], prompt_len + t - 1,
                         jnp.int32(p + t - 1), key_valid, cache, **layers)
    step_logits.append(logits)
  cached = np.stack(step_logits, axis=1)  # [B,M,V]
  full = _full_logits(params, config, tokens, valid, completion, np.ones((3, m), bool))
  assert np.abs(np.asarray(full)).max() > 1.0  # logits are not trivially tiny
  np.testing.assert_allclose(cached, full, atol=ATOL, rtol=0)


def _np_sampling_logprobs(logits, tokens, temperature, top_k, top_p):
  """Independent NumPy top-k/top-p (ascending-sort formulation, as in HF's warpers)."""
  x = logits.astype(np.float64) / temperature
  v = x.shape[-1]
  if top_k > 0:
    kth = np.sort(x, axis=-1)[..., v - top_k][..., None]
    x = np.where(x < kth, -np.inf, x)
  if top_p < 1.0:
    order = np.argsort(x, axis=-1)  # ascending
    xs = np.take_along_axis(x, order, axis=-1)
    ps = np.exp(xs - xs.max(-1, keepdims=True))
    ps /= ps.sum(-1, keepdims=True)
    remove_sorted = np.cumsum(ps, axis=-1) <= 1 - top_p
    remove_sorted[..., -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    x = np.where(remove, -np.inf, x)
  logp = x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True)) - x.max(
      -1, keepdims=True)
  return np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("family,temperature,top_k,top_p", [
    ("llama_gqa_tied", 0.0, 0, 1.0),
    ("qwen3_qknorm", 0.8, 0, 0.9),
    ("qwen2_bias", 1.3, 20, 0.95),
])
def test_sample_logprobs_match_full_forward(family, temperature, top_k, top_p):
  config = TINY_CONFIGS[family]
  params = random_params(config, seed=2, scale=3.0)
  rng = np.random.default_rng(1)
  b, g, n_new = 3, 3, 12
  tokens, valid = padding.left_pad(ragged_prompts(rng, b, 16, config.vocab_size), 16,
                                    config.pad_token_id)
  out = sampling.sample(params, config, tokens, valid, jax.random.PRNGKey(3), num_samples=g,
                        max_new_tokens=n_new, temperature=temperature, top_k=top_k,
                        top_p=top_p, eos_ids=())
  m = out.tokens.shape[1]
  assert out.tokens.shape == (b * g, m) and m == 16
  np.testing.assert_array_equal(out.lengths, n_new)  # no EOS: every row runs to the limit
  np.testing.assert_array_equal(out.valid, np.broadcast_to(np.arange(m) < n_new, (b * g, m)))
  assert not np.any(out.finished)
  completion = np.asarray(out.tokens)
  full = np.asarray(_full_logits(params, config, np.repeat(tokens, g, 0),
                                 np.repeat(valid, g, 0), completion, np.asarray(out.valid)))
  logp = jax.nn.log_softmax(full, axis=-1)
  expected = np.take_along_axis(np.asarray(logp), completion[..., None], -1)[..., 0]
  mask = np.asarray(out.valid)
  np.testing.assert_allclose(np.where(mask, out.logprobs, 0), np.where(mask, expected, 0),
                             atol=ATOL, rtol=0)
  np.testing.assert_array_equal(np.asarray(out.logprobs)[~mask], 0)
  if temperature == 0.0:
    np.testing.assert_array_equal(completion[mask], full.argmax(-1)[mask])
    np.testing.assert_array_equal(out.sample_logprobs, 0)
    # Greedy samples of one prompt are identical.
    np.testing.assert_array_equal(completion[0::g], completion[1::g])
  else:
    expected_s = _np_sampling_logprobs(full, completion, temperature, top_k, top_p)
    np.testing.assert_allclose(np.where(mask, out.sample_logprobs, 0),
                               np.where(mask, expected_s, 0), atol=ATOL, rtol=0)
    # The G samples of a prompt differ (independent draws).
    assert not np.array_equal(completion[0::g], completion[1::g])


@pytest.mark.parametrize("per_layer", [False, True], ids=["stacked", "per_layer"])
def test_sampling_with_unmerged_lora_matches_the_merged_model(per_layer):
  """Adapters applied inside each projection while decoding == the merged weights' forward.

  The reference is an uncached forward of `lora.apply_lora`'s merged kernels (the merge is
  checked against NumPy and transformers in tests/models/test_lora.py).
  """
  config = TINY_CONFIGS["qwen3_qknorm"]
  params = random_params(config, seed=6, scale=3.0)
  rank, alpha = 4, 8.0
  adapters = lora.init_lora(config, ("q_proj", "v_proj", "o_proj", "down_proj"), rank,
                            jax.random.PRNGKey(1))
  # Random B: a fresh adapter (B = 0) would hide an adapter that is never applied.
  leaves, treedef = jax.tree_util.tree_flatten_with_path(adapters)
  adapters = jax.tree_util.tree_unflatten(treedef, [
      0.3 * jax.random.normal(jax.random.PRNGKey(i), x.shape) if path[-1].key == "b" else x
      for i, (path, x) in enumerate(leaves)])
  rng = np.random.default_rng(2)
  b, g, n_new = 2, 2, 10
  tokens, valid = padding.left_pad(ragged_prompts(rng, b, 16, config.vocab_size), 16,
                                    config.pad_token_id)
  out = sampling.sample(params, config, tokens, valid, jax.random.PRNGKey(4), num_samples=g,
                        max_new_tokens=n_new, temperature=0.9, eos_ids=(), lora=adapters,
                        lora_scale=alpha / rank, per_layer=per_layer)
  merged = lora.apply_lora(params, adapters, alpha, rank)
  completion = np.asarray(out.tokens)
  full = np.asarray(_full_logits(merged, config, np.repeat(tokens, g, 0),
                                 np.repeat(valid, g, 0), completion, np.asarray(out.valid)))
  base = np.asarray(_full_logits(params, config, np.repeat(tokens, g, 0),
                                 np.repeat(valid, g, 0), completion, np.asarray(out.valid)))
  assert np.abs(full - base).max() > 0.1  # the adapters change the model
  expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(full, axis=-1)),
                                completion[..., None], -1)[..., 0]
  mask = np.asarray(out.valid)
  np.testing.assert_allclose(np.where(mask, out.logprobs, 0), np.where(mask, expected, 0),
                             atol=ATOL, rtol=0)


def test_eos_and_stop_sequences_end_rows():
  config = TINY_CONFIGS["llama_mha"]
  params = random_params(config, seed=4, scale=3.0)
  rng = np.random.default_rng(2)
  tokens, valid = padding.left_pad(ragged_prompts(rng, 4, 16, config.vocab_size), 16, 0)
  kw = dict(max_new_tokens=12, temperature=0.0)
  free = sampling.sample(params, config, tokens, valid, jax.random.PRNGKey(0), eos_ids=(), **kw)
  free_tokens = np.asarray(free.tokens)
  # An EOS id equal to row 0's 4th greedy token (if it did not appear earlier), and a stop
  # sequence equal to row 1's tokens 5..6.
  eos = int(free_tokens[0, 3])
  first_eos = [int(np.flatnonzero(r[:12] == eos)[0]) if np.any(r[:12] == eos) else None
               for r in free_tokens]
  stop_seq = free_tokens[1, 5:7].tolist()
  out = sampling.sample(params, config, tokens, valid, jax.random.PRNGKey(0), eos_ids=(eos,),
                        stop_token_sequences=[stop_seq], **kw)
  got = np.asarray(out.tokens)
  for i in range(4):
    ends = [12]
    if first_eos[i] is not None:
      ends.append(first_eos[i] + 1)
    row = free_tokens[i, :12].tolist()
    for j in range(1, 12):
      if row[j - 1:j + 1] == stop_seq:
        ends.append(j + 1)
        break
    n = min(ends)
    assert out.lengths[i] == n, (i, row, eos, stop_seq)
    assert bool(out.finished[i]) == (n < 12 or len(ends) > 1 and min(ends[1:]) == 12)
    np.testing.assert_array_equal(got[i, :n], free_tokens[i, :n])
    np.testing.assert_array_equal(got[i, n:], config.pad_token_id)
    np.testing.assert_array_equal(out.logprobs[i, n:], 0)
  assert out.lengths[0] <= 4 and out.finished[0]
  assert out.lengths[1] <= 7 and out.finished[1]


def test_bad_inputs_raise_clear_errors():
  config = TINY_CONFIGS["llama_mha"]
  params = random_params(config)
  tokens = np.full((2, 16), 5, np.int32)
  right_padded = np.ones((2, 16), bool)
  right_padded[0, -3:] = False
  with pytest.raises(ValueError, match="left-padded"):
    sampling.sample(params, config, tokens, right_padded, jax.random.PRNGKey(0),
                    max_new_tokens=4)
  ok = np.ones((2, 16), bool)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.sample(params, config, tokens, ok, jax.random.PRNGKey(0), max_new_tokens=0)
  with pytest.raises(ValueError, match="top_p"):
    sampling.sample(params, config, tokens, ok, jax.random.PRNGKey(0), max_new_tokens=4,
                    top_p=0.0)
  with pytest.raises(ValueError, match="exceeds max_len"):
    sampling.sample(params, config, tokens, ok, jax.random.PRNGKey(0), max_new_tokens=20,
                    max_len=16)
