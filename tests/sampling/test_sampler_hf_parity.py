"""Greedy generation is token-identical to transformers' `generate(do_sample=False)`.

transformers runs each prompt alone (no padding); we run them as one left-padded batch, so the
test also proves padding does not leak into the completions.
"""

import jax
import numpy as np
import pytest
import torch
from reference_models import hf_smollm2_dir, hf_smollm2_torch_model, tiny_hf_model

from pbrl_jax import padding
from pbrl_jax import sampling
from pbrl_jax.models import from_pretrained


def _hf_greedy(model, ids, max_new_tokens, eos_ids, pad_id):
  with torch.no_grad():
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=int),
                         do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=list(eos_ids), pad_token_id=pad_id,
                         temperature=None, top_p=None, top_k=None)
  return out[0, len(ids):].tolist()


def _ours(bundle, prompt_ids, max_new_tokens, eos_ids):
  config = bundle.config
  p = padding.bucket_length(max(len(x) for x in prompt_ids), sampling.PROMPT_BUCKETS)
  # Empty rows up to a power of two, as generate_text does: both share one program.
  rows = 1 << (len(prompt_ids) - 1).bit_length()
  tokens, valid = padding.left_pad(list(prompt_ids) + [[]] * (rows - len(prompt_ids)), p,
                                    config.pad_token_id)
  out = sampling.sample(bundle.params, config, tokens, valid, jax.random.PRNGKey(0),
                        max_new_tokens=max_new_tokens, temperature=0.0, eos_ids=eos_ids)
  toks, lengths = jax.device_get((out.tokens, out.lengths))
  return [toks[i, :lengths[i]].tolist() for i in range(len(prompt_ids))], out


@pytest.mark.parametrize("family", ["llama", "qwen3_tied"])
def test_greedy_matches_transformers_tiny_random(family, tmp_path):
  model, path = tiny_hf_model(family, tmp_path, seed=3)
  with torch.no_grad():
    # Sharpen the random model's output distribution so argmax gaps are far above fp32 noise.
    model.get_input_embeddings().weight.mul_(8.0)
    model.get_output_embeddings().weight.data = model.get_input_embeddings().weight.data if (
        model.config.tie_word_embeddings) else model.get_output_embeddings().weight.data * 8.0
  model.save_pretrained(path, safe_serialization=True)
  bundle = from_pretrained(path)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 211, size=n).tolist() for n in (3, 11, 7, 16)]
  eos = (2,)
  ours, _ = _ours(bundle, prompts, 64, eos)
  for ids, got in zip(prompts, ours):
    assert got == _hf_greedy(model, ids, 64, eos, 0)
  assert max(len(x) for x in ours) > 20  # generation actually ran for a while


PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "¿Cuántos días tiene una semana? Responde brevemente.",
    "Escribe una frase sobre el mar.",
    "Quelle est la couleur du ciel par beau temps ?",
    "Donne-moi trois fruits rouges.",
    "Wie viele Beine hat eine Spinne?",
    "Quanto é 12 mais 30? Explique.",
    "Schreibe einen kurzen Satz über Katzen.",
]


@pytest.mark.slow
def test_greedy_matches_transformers_smollm2_multilingual():
  bundle = from_pretrained(hf_smollm2_dir())
  model = hf_smollm2_torch_model()
  tokenizer = bundle.tokenizer
  prompt_ids = sampling.encode_prompts(tokenizer, PROMPTS, chat=True)
  eos = sorted(set(bundle.config.eos_token_ids) | {tokenizer.eos_token_id})
  ours, out = _ours(bundle, prompt_ids, 64, eos)
  for i, (ids, got) in enumerate(zip(prompt_ids, ours)):
    ref = _hf_greedy(model, ids, 64, eos, bundle.config.pad_token_id)
    assert got == ref, (PROMPTS[i], tokenizer.decode(got), tokenizer.decode(ref))
  # Through the text API too (same prompts, same template): the decoded strings agree.
  texts = sampling.generate_text(bundle, PROMPTS, max_new_tokens=64)
  for i, text in enumerate(texts):
    assert text == tokenizer.decode(ours[i], skip_special_tokens=True)
  # A stop string cuts the text, and generation stops on its tokens.
  cut = sampling.generate_text(bundle, PROMPTS, max_new_tokens=64, stop=["Paris"])
  assert "Paris" in texts[0] and cut[0] == texts[0][:texts[0].index("Paris")]
  assert all(c == t for c, t in zip(cut[1:], texts[1:]) if "Paris" not in t)
