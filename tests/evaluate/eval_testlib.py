"""Helpers for the evaluation tests: a tiny random decoder with the real SmolLM2 tokenizer."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax

from pbrl_jax.data.records import Example
from pbrl_jax.models import DecoderConfig, init_params


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer() -> Any:
  """The embedded SmolLM2 tokenizer (with its chat template), built from the GGUF header."""
  from pbrl_jax.models import smollm2_gguf_path
  from pbrl_jax.models.gguf_loader import GGUFFile
  from pbrl_jax.models.tokenizer import tokenizer_from_gguf_metadata
  path = smollm2_gguf_path()
  return tokenizer_from_gguf_metadata(GGUFFile(path).metadata, path)


def tiny_config(tokenizer: Any) -> DecoderConfig:
  """A two-layer GQA Llama over the tokenizer's full vocabulary."""
  return DecoderConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=32,
                       intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, tie_word_embeddings=True,
                       eos_token_ids=(int(tokenizer.eos_token_id),),
                       pad_token_id=int(tokenizer.pad_token_id or 0),
                       max_position_embeddings=1024)


def tiny_params(config: DecoderConfig, seed: int = 0, scale: float = 6.0) -> Any:
  """Random params, scaled up so greedy decoding is not decided by near-ties."""
  params = init_params(config, jax.random.PRNGKey(seed))
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x if "norm" in jax.tree_util.keystr(p) else x * scale, params)


def tiny_model_dir(out_dir: str, seed: int = 0) -> tuple[str, DecoderConfig, Any]:
  """Writes the tiny model (random weights + SmolLM2 tokenizer) as an HF directory."""
  from pbrl_jax.models import export_hf
  tok = smollm2_tokenizer()
  config = tiny_config(tok)
  params = tiny_params(config, seed)
  export_hf((params, config, tok), out_dir)
  return out_dir, config, params


# Parallel questions (same ids and answers) in three languages and scripts.
QUESTIONS = {
    "en": ["Tom has 3 apples and buys 4 more. How many apples does he have?",
           "A box holds 12 eggs. How many eggs are in 2 boxes?",
           "Sara reads 5 pages a day. How many pages does she read in 6 days?"],
    "de": ["Tom hat 3 Äpfel und kauft 4 dazu. Wie viele Äpfel hat er?",
           "Eine Schachtel enthält 12 Eier. Wie viele Eier sind in 2 Schachteln?",
           "Sara liest 5 Seiten am Tag. Wie viele Seiten liest sie in 6 Tagen?"],
    "th": ["ทอมมีแอปเปิ้ล 3 ผลและซื้อเพิ่มอีก 4 ผล เขามีแอปเปิ้ลกี่ผล",
           "กล่องหนึ่งใส่ไข่ได้ 12 ฟอง สองกล่องมีไข่กี่ฟอง",
           "ซาร่าอ่านหนังสือวันละ 5 หน้า 6 วันเธออ่านกี่หน้า"],
}
ANSWERS = ["7", "24", "30"]


def examples(langs=("en", "de", "th"), per_lang=(3, 2, 2)) -> list[Example]:
  out = []
  for lang, n in zip(langs, per_lang):
    for i in range(n):
      out.append(Example(f"q/{i}", lang, QUESTIONS[lang][i], ANSWERS[i]))
  return out


def write_mgsm_dir(directory: str, langs=("en", "de", "th")) -> str:
  """MGSM's layout: mgsm_<lang>.tsv with `question<TAB>answer` lines, no header."""
  os.makedirs(directory, exist_ok=True)
  for lang in langs:
    with open(os.path.join(directory, f"mgsm_{lang}.tsv"), "w", encoding="utf-8") as f:
      for q, a in zip(QUESTIONS[lang], ANSWERS):
        f.write(f"{q}\t{a}\n")
  return directory
