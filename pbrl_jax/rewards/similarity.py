"""Similarity of embeddings and texts: calibrated cosine (jittable) and chrF.

Raw cosines of a sentence encoder do not live on [0, 1]: USE-m3 gives ~0.09 to unrelated
sentences and ~0.85 to translations; e5-style encoders give ~0.75 to unrelated ones. Each
encoder therefore carries `calibration = (lo, hi)` (mean cosine of unrelated pairs and of
translation pairs, see `pbrl_jax.rewards.calibration`) and rewards use
`clip((cos - lo) / (hi - lo), 0, 1)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def cosine(a: Array, b: Array) -> Array:
  """Row-wise cosine of a [B,E] and b [B,E] -> [B]; 0 where either row is zero."""
  num = jnp.einsum("BE,BE->B", a, b)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return jnp.where(den > 0, num / jnp.maximum(den, 1e-12), 0.0)


def calibrate(cos: Array, lo: float, hi: float) -> Array:
  """clip((cos - lo) / (hi - lo), 0, 1)."""
  return jnp.clip((cos - lo) / (hi - lo), 0.0, 1.0)


def calibrated_cosine(policy_emb: Array, ref_emb: Array, lo: float, hi: float) -> Array:
  """Pure, jittable: calibrated cosine [B] of policy [B,E] and (cached) reference [B,E]."""
  return calibrate(cosine(policy_emb, ref_emb), lo, hi)


def np_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Host twin of `cosine` (no device round trip for small host batches)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
  out = np.einsum("be,be->b", a, b) / np.maximum(den, 1e-12)
  # A zero vector (nothing embedded) has cosine 0; a NaN vector stays NaN, so a broken
  # encoder output reaches the caller's non-finite check instead of passing as "unrelated".
  return np.where(den > 0, np.clip(out, -1.0, 1.0), np.where(np.isnan(den), np.nan, 0.0))


def np_calibrate(cos: np.ndarray, lo: float, hi: float) -> np.ndarray:
  return np.clip((np.asarray(cos) - lo) / (hi - lo), 0.0, 1.0)


def chrf(hypothesis: str, reference: str) -> float:
  """sacrebleu sentence chrF (character 6-grams, beta 2) scaled to [0, 1]."""
  import sacrebleu  # pylint: disable=g-import-not-at-top

  if not hypothesis.strip() or not reference.strip():
    return 0.0
  return float(sacrebleu.sentence_chrf(hypothesis, [reference]).score) / 100.0
