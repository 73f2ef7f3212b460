"""Sampling is correct in distribution and deterministic for a seed.

Statistical tolerance: with N independent draws, the empirical frequency of a token of
probability p has standard deviation sigma = sqrt(p (1 - p) / N). We require
|freq - p| <= 5 sigma + 1/N for every token (false-alarm rate below 1e-5 per test), and an
exact zero count for every token the filters remove.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampler_testlib import TINY_CONFIGS, random_params

from pbrl_jax import sampling
from pbrl_jax.models import logits_fn


def _np_target(logits, temperature, top_k, top_p):
  """Renormalised sampling distribution, written independently (HF warper order)."""
  x = np.asarray(logits, np.float64) / temperature
  if top_k > 0:
    kth = np.sort(x)[-top_k]
    x = np.where(x < kth, -np.inf, x)
  p = np.exp(x - x.max())
  p /= p.sum()
  if top_p < 1.0:
    order = np.argsort(-p, kind="stable")
    ahead = np.cumsum(p[order]) - p[order]
    keep = np.zeros_like(p, bool)
    keep[order[ahead < top_p]] = True
    p = np.where(keep, p, 0.0)
    p /= p.sum()
  return p


def _check_frequencies(draws, target):
  n = draws.size
  freq = np.bincount(draws, minlength=target.size) / n
  sigma = np.sqrt(target * (1 - target) / n)
  assert np.all(freq[target == 0] == 0), "a filtered-out token was sampled"
  bad = np.abs(freq - target) > 5 * sigma + 1.0 / n
  assert not bad.any(), (np.flatnonzero(bad), freq[bad], target[bad])


LOGITS = np.array([2.0, 1.5, 1.4, 1.0, 0.3, 0.0, -0.2, -0.5, -1.0, -2.0, -3.0, 0.9], np.float32)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (1.0, 6, 0.7), (2.0, 3, 0.5)])
def test_choose_tokens_matches_renormalised_softmax(temperature, top_k, top_p):
  n = 60_000
  knobs = sampling.SamplingKnobs(
      max_new_tokens=jnp.int32(1), temperature=jnp.float32(temperature),
      top_k=jnp.int32(top_k), top_p=jnp.float32(top_p))
  keys = jax.random.split(jax.random.PRNGKey(7), n)
  logits = jnp.broadcast_to(LOGITS, (n, LOGITS.size))
  tokens, logp = jax.jit(sampling.choose_tokens)(logits, keys, knobs)
  target = _np_target(LOGITS, temperature, top_k, top_p)
  _check_frequencies(np.asarray(tokens), target)
  # The reported sampling log-prob is the log of that target probability.
  np.testing.assert_allclose(np.asarray(logp)[:50], np.log(target[np.asarray(tokens)[:50]]),
                             atol=1e-5)


def test_greedy_is_argmax():
  knobs = sampling.SamplingKnobs(jnp.int32(1), jnp.float32(0.0), jnp.int32(0),
                                 jnp.float32(1.0))
  logits = jax.random.normal(jax.random.PRNGKey(0), (64, 50))
  tokens, logp = sampling.choose_tokens(logits, jax.random.split(jax.random.PRNGKey(1), 64),
                                        knobs)
  np.testing.assert_array_equal(tokens, np.argmax(logits, -1))
  np.testing.assert_array_equal(logp, 0)


def test_grpo_samples_of_one_prompt_follow_model_distribution():
  """Through the whole program: G draws of the first token of one prompt (shared prefill)."""
  config = TINY_CONFIGS["qwen3_qknorm"]
  params = random_params(config, seed=5, scale=2.0)
  prompt = np.array([[0, 0, 0, 5, 17, 42, 8, 9, 11, 30, 31, 32, 33, 34, 35, 36]], np.int32)
  valid = prompt != 0
  g = 8192
  temperature, top_k, top_p = 0.9, 12, 0.9
  out = sampling.sample(params, config, prompt, valid, jax.random.PRNGKey(11), num_samples=g,
                        max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_ids=())
  assert out.tokens.shape == (g, 16)
  np.testing.assert_array_equal(out.lengths, 1)
  model_logits = np.asarray(logits_fn(params, config, prompt, valid))[0, -1]
  target = _np_target(model_logits, temperature, top_k, top_p)
  assert (target > 0).sum() >= 3  # a non-degenerate distribution
  _check_frequencies(np.asarray(out.tokens[:, 0]), target)


def test_same_seed_same_tokens_other_seed_differs():
  config = TINY_CONFIGS["llama_gqa_tied"]
  params = random_params(config, seed=6, scale=2.0)
  prompt = np.tile(np.arange(3, 19, dtype=np.int32), (2, 1))
  valid = np.ones_like(prompt, bool)
  kw = dict(num_samples=2, max_new_tokens=10, temperature=1.0, top_p=0.95, eos_ids=())
  a = sampling.sample(params, config, prompt, valid, jax.random.PRNGKey(0), **kw)
  b = sampling.sample(params, config, prompt, valid, jax.random.PRNGKey(0), **kw)
  c = sampling.sample(params, config, prompt, valid, jax.random.PRNGKey(1), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert not np.array_equal(a.tokens, c.tokens)
  # Identical prompts in rows 0 and 1 still get different draws (per-row keys).
  assert not np.array_equal(a.tokens[0], a.tokens[2])
