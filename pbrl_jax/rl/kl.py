"""Per-token KL estimators between the policy and the frozen reference.

With log-ratio  x = log pi_ref(y_t) - log pi(y_t)  at sampled tokens y_t ~ pi
(Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html):

  k1 = -x                 unbiased for KL(pi || pi_ref), high variance, can be negative
  k2 = x^2 / 2            biased, low variance, gradient of KL in expectation (on-policy)
  k3 = exp(x) - x - 1     unbiased, non-negative, low variance

TRL's GRPOTrainer puts beta * k3 in the per-token loss; tunix GRPO uses k1 by default in the
loss; TRL's old PPOTrainer subtracts beta * k1 from the per-token reward (see docs/presets.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pbrl_jax.config_schema import Choice

Array = jax.Array


class KLEstimator(Choice):
  K1 = "k1"
  K2 = "k2"
  K3 = "k3"


class KLPlacement(Choice):
  """Where the KL penalty enters: the loss (GRPO), the per-token reward (PPO), or nowhere."""

  LOSS = "loss"
  REWARD = "reward"
  NONE = "none"


def kl_k1(logp: Array, ref_logp: Array) -> Array:
  """k1 = log pi - log pi_ref, per token."""
  return logp - ref_logp


def kl_k2(logp: Array, ref_logp: Array) -> Array:
  """k2 = (log pi - log pi_ref)^2 / 2, per token."""
  return 0.5 * jnp.square(logp - ref_logp)


def kl_k3(logp: Array, ref_logp: Array) -> Array:
  """k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1, per token (>= 0)."""
  x = ref_logp - logp
  return jnp.exp(x) - x - 1.0


def kl_estimate(estimator: KLEstimator, logp: Array, ref_logp: Array,
                clamp: tuple[float, float] | None = None) -> Array:
  """Per-token KL estimate [B,T] by a validated estimator, optionally clamped to [lo, hi].

  Masking is the caller's: padding positions are excluded by the aggregation's mask.
  """
  if estimator is KLEstimator.K1:
    kl = kl_k1(logp, ref_logp)
  elif estimator is KLEstimator.K2:
    kl = kl_k2(logp, ref_logp)
  elif estimator is KLEstimator.K3:
    kl = kl_k3(logp, ref_logp)
  else:
    raise ValueError(f"unknown KL estimator {estimator}")
  if clamp is not None:
    kl = jnp.clip(kl, clamp[0], clamp[1])
  return kl


def kl_penalized_rewards(scores: Array, kl: Array, mask: Array, beta: float) -> Array:
  """PPO's per-token reward: -beta * kl_t on every completion token, plus the sequence
  score at the last valid token.

    r_t = -beta kl_t m_t + score [t == last valid t]

  Ziegler et al. 2019 (arXiv 1909.08593), eq. 2; Ouyang et al. 2022 (InstructGPT), eq. 2;
  TRL's old PPOTrainer (k1 in the reward, beta = 0.05 by default).

  Args:
    scores: [B] sequence-level reward.
    kl: [B,T] per-token KL estimate (k1 in TRL's PPO).
    mask: [B,T] completion mask (1 then 0: right-padded completions).
    beta: KL coefficient.

  Returns:
    [B,T] rewards, zero on padding.
  """
  m = mask.astype(kl.dtype)
  t = m.shape[1]
  # Index of the last valid token; a fully masked row puts the score nowhere.
  last = t - 1 - jnp.argmax(m[:, ::-1] > 0, axis=1)
  has_any = jnp.sum(m, axis=1) > 0
  onehot = jax.nn.one_hot(last, t, dtype=kl.dtype) * has_any[:, None].astype(kl.dtype)
  return -beta * kl * m + scores[:, None].astype(kl.dtype) * onehot
