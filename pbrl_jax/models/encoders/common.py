"""What every reward encoder shares: text cleaning, length buckets, chunked host encoding.

A reward encoder maps texts to L2-normalised sentence embeddings [B,E]. The Flax encoders split
the work in two: `tokenize` on the host (ids padded to one of a few static lengths, so the jitted
forward compiles once per bucket) and a pure `embed(params, batch)` that the trainer can jit
together with the policy. `encode` is the host convenience used for references and evaluation;
texts longer than the encoder's window are cut into windows whose embeddings are averaged
(weighted by token count) and re-normalised, instead of being silently truncated.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

# Shortest bucket; each next bucket doubles, up to the encoder's `max_tokens`.
MIN_BUCKET = 16
# Texts longer than this (characters) are cut before tokenisation: no reward needs more than
# a few windows of a response, and a 100k-character loop must not stall the host.
MAX_CHARS = 20_000
# Windows per text kept by `encode`; later text adds little to a sentence embedding.
MAX_WINDOWS = 8

_SURROGATES = re.compile("[\ud800-\udfff]")
# C0/C1 control characters other than tab and newline.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(text: Any) -> str:
  """A string any tokenizer accepts: lone surrogates -> U+FFFD, control characters removed.

  Lone surrogates come from `bytes.decode(errors='surrogateescape')`; the C++ SentencePiece
  and Rust tokenizers refuse them.
  """
  if not isinstance(text, str):
    text = "" if text is None else str(text)
  text = _SURROGATES.sub("\ufffd", text[:MAX_CHARS])
  return _CONTROLS.sub(" ", text)


def length_buckets(max_tokens: int, min_bucket: int = MIN_BUCKET) -> tuple[int, ...]:
  """Static sequence lengths: min_bucket, 2*min_bucket, ... capped at max_tokens."""
  out = []
  b = min(min_bucket, max_tokens)
  while b < max_tokens:
    out.append(b)
    b *= 2
  out.append(max_tokens)
  return tuple(out)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if length <= b:
      return b
  return buckets[-1]


def pad_ids(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
  """Right-pads id rows to [B,length]; returns (ids int32, mask int32)."""
  ids = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = list(r)[:length]
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return ids, mask


def windows(ids: Sequence[int], width: int) -> list[list[int]]:
  """Cuts a token id list (without special tokens) into at most MAX_WINDOWS windows."""
  ids = list(ids)
  if not ids:
    return [[]]
  out = [ids[i:i + width] for i in range(0, len(ids), width)]
  return out[:MAX_WINDOWS]


def encode_windows(pieces: Sequence[Sequence[Sequence[int]]],
                   embed_rows: Callable[[list[list[int]]], np.ndarray],
                   batch_size: int) -> np.ndarray:
  """Embeds every window of every text and averages them per text.

  Args:
    pieces: per text, its windows (each a list of token ids, special tokens included).
    embed_rows: list of id rows -> [n, E] L2-normalised embeddings.
    batch_size: rows per call of `embed_rows`.

  Returns:
    [len(pieces), E] float32, L2-normalised; a text's embedding is the token-count-weighted mean
    of its windows' embeddings.
  """
  flat = [w for p in pieces for w in p]
  owner = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])
  weight = np.array([max(len(w), 1) for w in flat], np.float32)
  chunks = [embed_rows(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)]
  emb = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 1), np.float32)
  out = np.zeros((len(pieces), emb.shape[-1]), np.float32)
  np.add.at(out, owner, emb * weight[:, None])
  norm = np.linalg.norm(out, axis=-1, keepdims=True)
  return (out / np.maximum(norm, 1e-12)).astype(np.float32)
