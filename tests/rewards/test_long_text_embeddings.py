"""Policy and reference sides embed a long text the same way (several encoder windows)."""

import jax
import numpy as np

from pbrl_jax import host_scoring
from pbrl_jax.rewards import load_encoder, score


def _long_text():
  sentences = [f"Im Schritt {i} legt Anna {i + 3} Äpfel in den Korb, und danach zählt sie alle"
               f" Äpfel noch einmal nach, um sicher zu sein." for i in range(40)]
  return " ".join(sentences) + "\n#### 8"


def test_reference_and_policy_embeddings_of_a_long_text_agree():
  encoder = load_encoder("use_m3")
  text = _long_text()
  segs = [score.segments(text, "de"), score.segments("Kurz: 3 + 5 = 8.\n#### 8", "de")]
  assert encoder.window_count(segs[0]["full"]) >= 2 and encoder.window_count(
      segs[1]["full"]) == 1
  # The trainer's jitted policy side: its encoder batch, embedded row by row.
  batch = host_scoring.encoder_batch(encoder, segs, score.SEGMENTS)
  flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
  jitted = np.asarray(encoder.embed(encoder.params, flat)).reshape(2, len(score.SEGMENTS), -1)
  policy = host_scoring.embed_long_segments_on_host(encoder, segs, score.SEGMENTS, jitted)
  # The pivot step's reference side: `encode` of each text (windows averaged).
  for i, seg in enumerate(segs):
    for k, key in enumerate(score.SEGMENTS):
      ref = encoder.encode([seg[key]])[0]
      np.testing.assert_allclose(policy[i, k], ref, atol=1e-5)
  # Without the host re-embedding the long text's first window alone differs clearly.
  assert np.abs(jitted[0, 0] - encoder.encode([segs[0]["full"]])[0]).max() > 1e-3
  np.testing.assert_array_equal(policy[1], jitted[1])  # short segments keep the jit's vectors
