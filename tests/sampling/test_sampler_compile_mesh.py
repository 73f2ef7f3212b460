"""Bounded compilation (one program per bucket) and mesh == single-device tokens."""

import jax
import numpy as np
import pytest
from sampler_testlib import TINY_CONFIGS, ragged_prompts, random_params

from pbrl_jax import padding
from pbrl_jax import sampling
from pbrl_jax.models.sharding import make_mesh


def test_no_recompilation_within_a_bucket():
  config = TINY_CONFIGS["llama_gqa_tied"].replace(vocab_size=89)  # a config no other test uses
  params = random_params(config, seed=3, scale=2.0)
  rng = np.random.default_rng(0)
  program = sampling._sample_program  # pylint: disable=protected-access

  def run(max_prompt, **kw):
    prompts = ragged_prompts(rng, 2, max_prompt, config.vocab_size)
    prompts[0] = rng.integers(3, config.vocab_size, size=max_prompt).tolist()
    tokens, valid = padding.left_pad(prompts, max(len(p) for p in prompts),
                                      config.pad_token_id)
    return sampling.sample(params, config, tokens, valid, jax.random.PRNGKey(kw.pop("seed", 0)),
                           num_samples=2, **kw)

  before = program._cache_size()  # pylint: disable=protected-access
  run(9, max_new_tokens=5, temperature=0.0)
  assert program._cache_size() == before + 1  # pylint: disable=protected-access
  # New content, prompt lengths, max_new_tokens, temperature, top-k/p, EOS ids, stop
  # sequences and seeds within the same (P=16, M=16) buckets: the same program.
  run(16, max_new_tokens=16, temperature=0.7, top_k=5, seed=1)
  run(3, max_new_tokens=1, temperature=1.2, top_p=0.8, eos_ids=(2, 7, 9), seed=2)
  run(12, max_new_tokens=9, temperature=0.0, stop_token_sequences=[[5, 6], [7, 8, 9]])
  run(7, max_new_tokens=11, temperature=1.0, top_k=3, top_p=0.5,
      stop_token_sequences=[[1], [2], [3, 4, 5, 6, 7]], eos_ids=(4,))
  assert program._cache_size() == before + 1  # pylint: disable=protected-access
  # A new completion bucket compiles exactly one more program, and a new prompt bucket too.
  run(9, max_new_tokens=17, temperature=0.0)
  assert program._cache_size() == before + 2  # pylint: disable=protected-access
  run(20, max_new_tokens=3, temperature=0.5)
  assert program._cache_size() == before + 3  # pylint: disable=protected-access
  run(25, max_new_tokens=16, temperature=0.9, top_k=2, seed=4)
  assert program._cache_size() == before + 3  # pylint: disable=protected-access


def _mesh_vs_single(shape):
  assert jax.device_count() == 8
  config = TINY_CONFIGS["qwen3_qknorm"]
  params = random_params(config, seed=8, scale=3.0)
  rng = np.random.default_rng(4)
  tokens, valid = padding.left_pad(ragged_prompts(rng, 4, 16, config.vocab_size), 16,
                                    config.pad_token_id)
  kw = dict(num_samples=4, max_new_tokens=12, temperature=0.9, top_p=0.95, eos_ids=(2,))
  single = jax.device_put(params, jax.devices()[0])
  ref = sampling.sample(single, config, tokens, valid, jax.random.PRNGKey(5), **kw)
  assert len(ref.tokens.sharding.device_set) == 1
  mesh = make_mesh(**shape)
  out = sampling.sample(params, config, tokens, valid, jax.random.PRNGKey(5), mesh=mesh, **kw)
  assert len(out.tokens.sharding.device_set) == 8
  # Rows are split over ('data', 'fsdp').
  assert out.tokens.addressable_shards[0].data.shape[0] == 16 // (
      shape["data"] * shape["fsdp"])
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.lengths, ref.lengths)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


def test_mesh_gives_same_tokens_as_one_device():
  _mesh_vs_single(dict(data=4, fsdp=2))


@pytest.mark.slow
def test_tensor_parallel_mesh_gives_same_tokens_as_one_device():
  _mesh_vs_single(dict(data=2, fsdp=2, tensor=2))


def test_octave_bucket_length_wastes_at_most_a_quarter_and_four_lengths_per_octave():
  # Brute force: the smallest length >= n among {(4 + j) * 2**k / 4 : j = 0..3} (>= 16).
  ladder = sorted({(4 + j) * (1 << k) // 4 for k in range(4, 14) for j in range(4)})
  for n in range(1, 4097):
    want = next(x for x in ladder if x >= max(n, 16))
    got = padding.octave_bucket_length(n)
    assert got == want, (n, got, want)
    if n > 16:
      assert got < 1.25 * n  # padding is less than a quarter of the padded row
  # Every length in one octave maps onto at most four padded lengths.
  assert len({padding.octave_bucket_length(n) for n in range(129, 257)}) == 4
  with pytest.raises(ValueError):
    padding.octave_bucket_length(0)
