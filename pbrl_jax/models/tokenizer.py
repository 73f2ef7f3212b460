"""Tokenizers: from an HF directory, or built from a GGUF file's metadata.

A GGUF stores a byte-level BPE tokenizer as `tokenizer.ggml.*` keys: the tokens (already in
GPT-2's byte alphabet), the merges, token types (3 = control, 4 = user-defined), the
bos/eos/unk/pad ids, the pre-tokenizer name (`tokenizer.ggml.pre`) and the chat template. We
build a `tokenizers.Tokenizer` from those and wrap it in a `transformers.PreTrainedTokenizerFast`,
so `encode`, `decode`, `batch_decode` and `apply_chat_template` work as for any HF tokenizer.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import transformers
from transformers import PreTrainedTokenizerFast  # resolves the lazy module now
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from pbrl_jax.models.hf import LoadError

_CONTROL, _USER_DEFINED = 3, 4

# llama.cpp pre-tokenizer name -> split regex applied before the byte-level step.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
           "qwen2": _QWEN2_SPLIT}
# GPT-2 regex byte-level pre-tokenizers (SmolLM's HF tokenizer also isolates each digit,
# which the SmolLM vocabulary makes equivalent: it has no multi-digit tokens).
_GPT2_LIKE = {None, "default", "gpt2", "smollm", "starcoder", "refact"}


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, (chr(c) for c in cs)))


def _pre_tokenizer(pre: str | None, source: str) -> Any:
  if pre in _SPLITS:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
  if pre in _GPT2_LIKE:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  raise LoadError(f"{source}: tokenizer.ggml.pre {pre!r} is not supported;"
                  f" supported: {sorted(str(p) for p in _GPT2_LIKE | set(_SPLITS))}")


def tokenizer_from_gguf_metadata(metadata: Mapping[str, Any], source: str
                                 ) -> PreTrainedTokenizerFast:
  """A fast tokenizer (with chat template) from GGUF `tokenizer.*` metadata.

  Args:
    metadata: the GGUF key/value metadata.
    source: file name for error messages.

  Raises:
    LoadError: the tokenizer kind or pre-tokenizer is not supported, or a key is missing.
  """
  kind = metadata.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise LoadError(f"{source}: tokenizer.ggml.model {kind!r} is not supported (only 'gpt2'"
                    " byte-level BPE)")
  if "tokenizer.ggml.tokens" not in metadata:
    raise LoadError(f"{source}: missing metadata field 'tokenizer.ggml.tokens'")
  tokens: list[str] = metadata["tokenizer.ggml.tokens"]
  types: list[int] = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
  alphabet = set(_bytes_to_unicode().values())
  spelling = _bytes_to_unicode()
  vocab = {}
  for i, tok in enumerate(tokens):
    if not set(tok) <= alphabet:
      tok = "".join(spelling[b] for b in tok.encode("utf-8"))
    vocab[tok] = i
  # No merges (a vocabulary of single symbols) is valid; llama.cpp writes none then.
  merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                             continuing_subword_prefix="", end_of_word_suffix="",
                             fuse_unk=False))
  tok.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre"), source)
  tok.decoder = decoders.ByteLevel()
  # Control tokens stay whole and are special; a "control" token spelled outside the byte
  # alphabet is a llama.cpp mislabel and is skipped (as transformers does).
  control = [AddedToken(t, normalized=False, special=True)
             for t, ty in zip(tokens, types) if ty == _CONTROL and set(t) <= alphabet]
  tok.add_special_tokens(control)
  user = [AddedToken(t, normalized=False, special=False)
          for t, ty in zip(tokens, types) if ty == _USER_DEFINED and t in vocab]
  if user:
    tok.add_tokens(user)

  def token(key: str) -> str | None:
    i = metadata.get(f"tokenizer.ggml.{key}")
    return tokens[i] if i is not None and 0 <= i < len(tokens) else None

  bos = token("bos_token_id")
  add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
  add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
  eos = token("eos_token_id")
  if add_bos or add_eos:
    single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    pair = single + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
    specials = [(t, vocab[t]) for t in {bos if add_bos else None, eos if add_eos else None}
                if t is not None]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=specials)
  return PreTrainedTokenizerFast(
      tokenizer_object=tok,
      bos_token=bos, eos_token=eos, unk_token=token("unknown_token_id"),
      pad_token=token("padding_token_id"),
      chat_template=metadata.get("tokenizer.chat_template"),
      clean_up_tokenization_spaces=False,
      add_bos_token=add_bos, add_eos_token=add_eos,
  )


def load_hf_tokenizer(model_dir: str) -> Any:
  """The tokenizer saved in an HF directory, or None when it has no tokenizer files."""
  names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
  if not any(os.path.isfile(os.path.join(model_dir, n)) for n in names):
    return None
  return transformers.AutoTokenizer.from_pretrained(model_dir)
