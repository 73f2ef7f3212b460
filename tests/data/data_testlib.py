"""Shared fixtures for tests/data: a tiny chat tokenizer, fake encoders, fixture writers."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np

CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

_CORPUS = [
    "A fog bank rolls in from the ocean to cover a city. It takes 10 minutes.",
    "Eine Nebelbank zieht vom Meer her in eine Stadt hinein. Es dauert 185 Minuten.",
    "Solve the problem step by step. Write the final answer as a number #### 42",
    "Un banc de brouillard arrive de l'océan. Combien de minutes faut-il?",
    "霧が海から町にやってきます。何分かかりますか。",
] * 4


def tiny_tokenizer():
  """A byte-level BPE PreTrainedTokenizerFast with a chat template, trained in milliseconds."""
  # pylint: disable-next=g-import-not-at-top
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE(unk_token=None))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<|user|>", "<|end|>",
                                                               "<|assistant|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(_CORPUS, trainer)
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|end|>")
  hf.chat_template = CHAT_TEMPLATE
  return hf


def fake_embed(texts: Sequence[str], dim: int = 8, salt: str = "") -> np.ndarray:
  """Deterministic pseudo-embeddings from a hash of each text."""
  out = np.zeros((len(texts), dim), np.float32)
  for i, t in enumerate(texts):
    seed = int.from_bytes(hashlib.sha256((salt + t).encode()).digest()[:8], "little")
    out[i] = np.random.default_rng(seed).standard_normal(dim)
  return out


class FakeEncoder:
  """A host encoder engine for `load_encoder('host:data_testlib:FakeEncoder')`."""

  def encode(self, texts):
    return fake_embed(list(texts), 8, "host")


def write_jsonl(path: str, rows: Sequence[object]) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
  return path


def write_bytes(path: str, data: bytes) -> str:
  with open(path, "wb") as f:
    f.write(data)
  return path


def mgsm_dir(root: str, n: int = 6) -> str:
  """MGSM's published layout: mgsm_{lang}.tsv, question<TAB>answer, no header."""
  os.makedirs(root, exist_ok=True)
  for lang, word in (("en", "apples"), ("de", "Äpfel"), ("fr", "pommes")):
    with open(os.path.join(root, f"mgsm_{lang}.tsv"), "w", encoding="utf-8") as f:
      for i in range(n):
        f.write(f"Q{i}: {i} + {i + 1} {word}?\t{2 * i + 1}\n")
  return root
