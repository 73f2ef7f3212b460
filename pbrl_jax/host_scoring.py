"""What the score stage computes on the host for the rows it scores: reward items, the reward
encoder's inputs, and the long segments embedded as the pivot step embeds the references.

`pbrl_jax.stages.score_stage` calls these for the rows this host's devices hold
(`distributed.local_rows`): on a pod each host scores its own slice of the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pbrl_jax.rewards import score as score_lib

if TYPE_CHECKING:
  from pbrl_jax.stages import PromptBatch


def reward_items(prompts: PromptBatch, texts: Sequence[str], encoder_name: str,
                 rows: Sequence[int], parsed: Sequence[score_lib.Parsed] = ()
                 ) -> list[dict[str, Any]]:
  """One reward item for each of `rows` (row i*G + j: completion j of prompt i), with the
  cached reference embeddings.

  `parsed`: the texts of `rows` parsed by `score_lib.parse`, when the caller has them (else
  the scorer parses).
  """
  g = prompts.group_size
  emb = prompts.ref_emb
  items = []
  for k, row in enumerate(rows):
    i = int(row) // g
    # The pivot step cached the reference's segments (`score.SEGMENT_FIELDS`); one it did
    # not cache (references built with fewer `embed_fields`) is embedded by the scorer.
    cached = {seg: emb[f"{encoder_name}/{field}"][i]
              for seg, field in score_lib.SEGMENT_FIELDS.items()
              if f"{encoder_name}/{field}" in emb} or None
    items.append({
        "lang": prompts.langs[i], "question": prompts.questions[i], "response": texts[row],
        "reference": prompts.reference[i], "reference_answer": prompts.reference_answer[i],
        "gold": prompts.gold[i], "reference_embeddings": cached,
        "parsed": parsed[k] if parsed else None,
    })
  return items


def encoder_batch(encoder: Any, segments: Sequence[dict[str, str]], keys: Sequence[str]
                  ) -> dict[str, np.ndarray]:
  """Reward-encoder inputs [R, S, ...] for S text segments of each of R completions.

  Sequences are padded to the encoder's longest bucket so the scoring program has one shape
  (zeros beyond the mask are never attended to or pooled).
  """
  flat = [seg[k] for seg in segments for k in keys]
  tok = encoder.tokenize(flat)
  length = max(encoder.buckets)
  out = {}
  for name, arr in tok.items():
    arr = np.asarray(arr)
    if arr.ndim >= 2 and arr.shape[1] < length:
      arr = np.pad(arr, [(0, 0), (0, length - arr.shape[1])] + [(0, 0)] * (arr.ndim - 2))
    out[name] = arr.reshape((len(segments), len(keys)) + arr.shape[1:])
  return out


def embed_long_segments_on_host(encoder: Any, segments: Sequence[dict[str, str]],
                                keys: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
  """`embeddings` [R, S, E] with every segment longer than one window re-embedded on the host.

  The scoring jit embeds each segment from its first window (`encoder.tokenize` truncates),
  while the pivot step embeds references with `encoder.encode`, which averages the windows of
  a long text. Re-embedding the few long policy segments with `encode` makes both sides embed
  the same text the same way. Returns a copy; short segments keep the jit's embeddings.
  """
  long = [(i, k, seg[key]) for i, seg in enumerate(segments) for k, key in enumerate(keys)
          if encoder.window_count(seg[key]) > 1]
  out = np.array(embeddings, copy=True)
  if long:
    for (i, k, _), emb in zip(long, encoder.encode([text for _, _, text in long])):
      out[i, k] = emb
  return out
