"""The embedded SmolLM2-135M-Instruct GGUF against transformers loading the same GGUF.

Relative error is max|ours - transformers| / max|transformers| over all compared logits.
"""

import os
import time

import numpy as np
import pytest

from pbrl_jax.models import export_hf, from_pretrained, smollm2_gguf_path
from reference_models import (hf_smollm2_dir, hf_smollm2_tokenizer, hf_smollm2_torch_model,
                              rel_err, torch_logits)

pytestmark = pytest.mark.slow

TOL = 1e-4

PROMPTS = {
    "en": "The capital of France is",
    "de": "Wie viele Äpfel hat Maria, wenn sie 12 Äpfel kauft und 5 isst?",
    "ja": "日本の首都はどこですか？東京は大きな都市です。",
    "ru": "Сколько будет семь плюс восемь? Ответ:",
    "th": "ประเทศไทยมีกี่จังหวัด",
    "zh": "请用中文回答：三加四等于几？",
    "fr": "Quelle est la couleur du ciel? 🌤️",
}

TOKENIZER_TEXTS = list(PROMPTS.values()) + [
    "Grüße aus München: 3,14159 und 2.718!",
    "emoji 🙂👍🏽🇩🇪 and ZWJ 👨‍👩‍👧",
    "digits 0 12 345 6789 1000000 ١٢٣ ๑๒๓",
    "  leading spaces,\ttabs\t\tand\n\n\nnewlines   \r\n trailing   ",
    "<|im_start|>user\nHi<|im_end|>\n",
    "",
]


@pytest.fixture(scope="module")
def ours():
  return from_pretrained(smollm2_gguf_path())


def test_load_time_measurement():
  """A measurement, not a timed test: prints the GGUF load time (model + tokenizer)."""
  from_pretrained(smollm2_gguf_path())  # warm: jit of eval_shape, imports
  import jax
  times, cpu = [], []
  for _ in range(3):
    t, c = time.perf_counter(), time.process_time()
    bundle = from_pretrained(smollm2_gguf_path())
    jax.block_until_ready(bundle.params)
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  # Wall time depends on what else runs on the machine; CPU time (all threads) much less.
  print(f"\nSmolLM2 GGUF load (model + tokenizer): wall {min(times):.2f}s best,"
        f" {np.mean(times):.2f}s mean of {len(times)}; CPU {min(cpu):.2f}s;"
        f" load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  assert bundle.tokenizer is not None and bundle.config.num_layers == 30


def test_config_from_metadata(ours):
  c = ours.config
  assert (c.model_type, c.vocab_size, c.hidden_size, c.intermediate_size) == (
      "llama", 49152, 576, 1536)
  assert (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 9, 3, 64)
  assert c.tie_word_embeddings and c.rope_theta == 100000.0
  assert (c.bos_token_id, c.eos_token_ids, c.pad_token_id) == (1, (2,), 2)


def test_tokenizer_parity(ours):
  ref = hf_smollm2_tokenizer()
  tok = ours.tokenizer
  for text in TOKENIZER_TEXTS:
    ids = tok.encode(text)
    assert ids == ref.encode(text), text
    assert tok.decode(ids) == ref.decode(ids) == text
  batch = tok(TOKENIZER_TEXTS)["input_ids"]
  assert batch == ref(TOKENIZER_TEXTS)["input_ids"]
  assert tok.batch_decode(batch) == ref.batch_decode(batch)
  assert tok.convert_ids_to_tokens(list(range(20))) == ref.convert_ids_to_tokens(list(range(20)))
  assert (tok.bos_token, tok.eos_token, tok.pad_token) == (ref.bos_token, ref.eos_token,
                                                          ref.pad_token)
  assert len(tok) == len(ref)


def test_chat_template_parity(ours):
  ref = hf_smollm2_tokenizer()
  assert ours.chat_template == ref.chat_template
  conversations = [
      [{"role": "user", "content": PROMPTS["de"]}],
      [{"role": "system", "content": "Antworte auf Japanisch."},
       {"role": "user", "content": PROMPTS["ja"]},
       {"role": "assistant", "content": "東京です。"},
       {"role": "user", "content": "本当？"}],
  ]
  for conv in conversations:
    for gen in (True, False):
      a = ours.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
      b = ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
      assert a == b
      assert ours.tokenizer.encode(a) == ref.encode(b)


def test_logits_parity_multilingual(ours):
  ref_model = hf_smollm2_torch_model()
  tok = hf_smollm2_tokenizer()
  worst, agree, total = 0.0, 0, 0
  for lang, prompt in PROMPTS.items():
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    ids = np.asarray([tok.encode(text)])
    a = np.asarray(ours.logits(ids))
    b = torch_logits(ref_model, ids)
    err = rel_err(a, b)
    worst = max(worst, err)
    agree += int((a.argmax(-1) == b.argmax(-1)).sum())
    total += ids.size
    assert err <= TOL, (lang, err)
  print(f"\nSmolLM2 GGUF vs transformers: max rel err {worst:.2e}, argmax agreement"
        f" {agree}/{total}")
  assert agree == total


def test_logits_parity_left_padded_batch(ours):
  ref_model = hf_smollm2_torch_model()
  tok = hf_smollm2_tokenizer()
  rows = [tok.encode(p) for p in PROMPTS.values()]
  t = max(map(len, rows))
  ids = np.full((len(rows), t), tok.pad_token_id)
  valid = np.zeros_like(ids)
  for i, r in enumerate(rows):
    ids[i, t - len(r):] = r
    valid[i, t - len(r):] = 1
  a = np.asarray(ours.logits(ids, valid))[valid == 1]
  b = torch_logits(ref_model, ids, valid)[valid == 1]
  assert rel_err(a, b) <= TOL
  assert (a.argmax(-1) == b.argmax(-1)).all()


def test_export_round_trip(ours, tmp_path):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  out = str(tmp_path / "smollm2_hf")
  export_hf(ours, out)
  import safetensors
  with safetensors.safe_open(os.path.join(out, "model.safetensors"), "numpy") as f:
    names = set(f.keys())
  assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # tied
  reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert reloaded.config.tie_word_embeddings
  tok = AutoTokenizer.from_pretrained(out)
  text = tok.apply_chat_template([{"role": "user", "content": PROMPTS["ru"]}], tokenize=False,
                                 add_generation_prompt=True)
  assert text == hf_smollm2_tokenizer().apply_chat_template(
      [{"role": "user", "content": PROMPTS["ru"]}], tokenize=False, add_generation_prompt=True)
  ids = np.asarray([tok.encode(text)])
  assert ids[0].tolist() == ours.tokenizer.encode(text)
  a = np.asarray(ours.logits(ids))
  b = torch_logits(reloaded, ids)
  assert rel_err(a, b) <= TOL
  # Our HF loader reads the exported directory back to the same parameters.
  again = from_pretrained(out)
  np.testing.assert_array_equal(np.asarray(again.params["layers"]["attn"]["q_proj"]),
                                np.asarray(ours.params["layers"]["attn"]["q_proj"]))


def test_cached_reference_dir_matches_gguf(ours):
  """The cached HF directory (for TRL and other tests) loads to the same model as the GGUF."""
  from_dir = from_pretrained(hf_smollm2_dir())
  ids = np.asarray([hf_smollm2_tokenizer().encode(PROMPTS["th"])])
  assert rel_err(from_dir.logits(ids), ours.logits(ids)) <= 1e-6
