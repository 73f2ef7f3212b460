"""Advantage estimators: group-relative (GRPO, Dr.GRPO, RLOO, rank) and GAE (PPO).

Axis letters: B sequences (rows), G group size (completions per prompt; groups are G
consecutive rows), T completion tokens.

Every function is pure and jittable; masks are explicit arrays; scalars (gamma, lambda,
floors) are plain Python floats.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pbrl_jax.config_schema import Choice
from pbrl_jax.rl import kl as kl_lib

Array = jax.Array


class AdvantageEstimator(Choice):
  """Which advantage estimator the trainer uses; validated once from the config string."""

  GRPO = "grpo"
  DR_GRPO = "dr_grpo"
  RLOO = "rloo"
  RANK = "rank"
  GAE = "gae"


def _grouped(rewards: Array, group_size: int) -> Array:
  """[B] -> [B/G, G]; rows b*G .. b*G+G-1 form one group."""
  if rewards.ndim != 1:
    raise ValueError(f"rewards must be [B], got shape {rewards.shape}")
  if rewards.shape[0] % group_size:
    raise ValueError(f"batch {rewards.shape[0]} is not a multiple of group size {group_size}")
  return rewards.reshape(-1, group_size)


def group_std(rewards: Array, group_size: int, ddof: int = 1) -> Array:
  """Per-row standard deviation of its group's rewards: [B] -> [B]."""
  r = _grouped(rewards, group_size)
  std = jnp.std(r, axis=-1, ddof=ddof, keepdims=True)
  return jnp.broadcast_to(std, r.shape).reshape(-1)


def grpo_advantages(rewards: Array, group_size: int, *, std_floor: float = 0.0,
                    eps: float = 1e-4, ddof: int = 1) -> Array:
  """GRPO group-relative advantages.

    A_i = (r_i - mean_g(r)) / (max(std_g(r), std_floor) + eps)

  with mean and std over the G completions of the same prompt (Shao et al. 2024,
  DeepSeekMath, arXiv 2402.03300, eq. 3 / outcome supervision). TRL's GRPOTrainer uses the
  unbiased std (ddof=1) and eps=1e-4 with no floor; the floor (our addition) keeps tightly
  clustered cosine rewards from being amplified into noise.

  Args:
    rewards: [B] scalar reward per completion, groups of G consecutive rows.
    group_size: G.
    std_floor: lower bound on the group std before dividing.
    eps: added to the (floored) std.
    ddof: delta degrees of freedom of the std (1: unbiased, as TRL; 0: population).

  Returns:
    [B] advantages.
  """
  r = _grouped(rewards, group_size)
  centred = r - jnp.mean(r, axis=-1, keepdims=True)
  std = jnp.std(r, axis=-1, ddof=ddof, keepdims=True)
  return (centred / (jnp.maximum(std, std_floor) + eps)).reshape(-1)


def dr_grpo_advantages(rewards: Array, group_size: int) -> Array:
  """Dr.GRPO advantages: A_i = r_i - mean_g(r), no std division.

  Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"
  (arXiv 2503.20783), sec. 3.2: dividing by the group std biases towards easy/hard prompts.
  """
  r = _grouped(rewards, group_size)
  return (r - jnp.mean(r, axis=-1, keepdims=True)).reshape(-1)


def rloo_advantages(rewards: Array, group_size: int) -> Array:
  """REINFORCE leave-one-out: A_i = r_i - (1 / (G - 1)) sum_{j != i} r_j.

  Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free!"); Ahmadian et al.
  2024 (arXiv 2402.14740). Equals G / (G - 1) * (r_i - mean_g(r)). Needs G >= 2.
  """
  if group_size < 2:
    raise ValueError("RLOO needs group_size >= 2")
  r = _grouped(rewards, group_size)
  others = (jnp.sum(r, axis=-1, keepdims=True) - r) / (group_size - 1)
  return (r - others).reshape(-1)


def rank_advantages(rewards: Array, group_size: int) -> Array:
  """Rank-based advantages in [-1, 1], robust to the scale of clustered rewards.

    rank_i = #{j : r_j < r_i} + (#{j : r_j == r_i} - 1) / 2     (average rank of ties)
    A_i = 2 rank_i / (G - 1) - 1

  A group's advantages sum to zero; a group of equal rewards gets all zeros. (Our choice, in
  the spirit of fitness shaping, Wierstra et al. 2014, "Natural Evolution Strategies".)
  """
  if group_size < 2:
    raise ValueError("rank advantages need group_size >= 2")
  r = _grouped(rewards, group_size)
  less = jnp.sum(r[:, None, :] < r[:, :, None], axis=-1)  # [B/G, G]: j with r_j < r_i
  equal = jnp.sum(r[:, None, :] == r[:, :, None], axis=-1)
  rank = less + (equal - 1) / 2.0
  return (2.0 * rank / (group_size - 1) - 1.0).astype(rewards.dtype).reshape(-1)


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float,
        bootstrap_value: Array | None = None) -> tuple[Array, Array]:
  """Generalised advantage estimation over completion tokens, by a reverse `lax.scan`.

    next_t  = V_{t+1} m_{t+1}                (t < T-1);  next_{T-1} = bootstrap
    delta_t = r_t + gamma next_t - V_t
    A_t     = (delta_t + gamma lam A_{t+1} m_{t+1}) m_t
    R_t     = (A_t + V_t) m_t                 (value targets)

  Schulman et al. 2016, arXiv 1506.02438, eq. 16. Masked positions neither contribute nor
  propagate: a completion that ends before T has next value 0 after its last token (the
  episode terminated), and `bootstrap_value` only enters when the last position is valid
  (a truncated completion).

  Args:
    rewards: [B,T] per-token rewards.
    values: [B,T] value estimates V(s_t).
    mask: [B,T] 1 for completion tokens, 0 for padding.
    gamma: discount.
    lam: GAE lambda.
    bootstrap_value: [B] value after the last position, or None for 0.

  Returns:
    (advantages [B,T], returns [B,T]), both zero where mask is 0.
  """
  m = mask.astype(values.dtype)
  if bootstrap_value is None:
    bootstrap_value = jnp.zeros(values.shape[:1], values.dtype)
  next_values = jnp.concatenate([values[:, 1:] * m[:, 1:], bootstrap_value[:, None]], axis=1)
  next_mask = jnp.concatenate([m[:, 1:], jnp.ones_like(m[:, :1])], axis=1)
  deltas = rewards + gamma * next_values - values

  def body(carry: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
    delta_t, m_t, next_m_t = xs
    adv = (delta_t + gamma * lam * carry * next_m_t) * m_t
    return adv, adv

  xs = (deltas.T, m.T, next_mask.T)  # time-major [T,B]
  _, adv = jax.lax.scan(body, jnp.zeros(values.shape[:1], values.dtype), xs, reverse=True)
  adv = adv.T
  return adv, (adv + values) * m


def masked_whiten(x: Array, mask: Array, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> Array:
  """(x - mean) / sqrt(var + eps) over the masked entries (population variance).

  With `shift_mean=False` the mean is added back (PPO's advantage whitening keeps the sign
  balance, reward whitening sometimes keeps the mean). Masked entries are returned as 0.
  """
  m = mask.astype(x.dtype)
  n = jnp.maximum(jnp.sum(m), 1.0)
  mean = jnp.sum(x * m) / n
  var = jnp.sum(jnp.square(x - mean) * m) / n
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * m


def compute_group_advantages(estimator: AdvantageEstimator, rewards: Array, group_size: int,
                             *, std_floor: float = 0.0, eps: float = 1e-4) -> Array:
  """Dispatches once on a validated estimator (GAE is token-level: use `gae`)."""
  if estimator is AdvantageEstimator.GRPO:
    return grpo_advantages(rewards, group_size, std_floor=std_floor, eps=eps)
  if estimator is AdvantageEstimator.DR_GRPO:
    return dr_grpo_advantages(rewards, group_size)
  if estimator is AdvantageEstimator.RLOO:
    return rloo_advantages(rewards, group_size)
  if estimator is AdvantageEstimator.RANK:
    return rank_advantages(rewards, group_size)
  raise ValueError(f"{estimator} is not a group estimator; use gae() for token-level PPO")


def group_spread_metrics(rewards: Array, group_size: int) -> dict[str, Array]:
  """Reward spread within groups: mean group std (ddof=0) and fraction of zero-std groups."""
  r = _grouped(rewards, group_size)
  std = jnp.std(r, axis=-1)
  return {
      "reward_mean": jnp.mean(rewards),
      "reward_group_std_mean": jnp.mean(std),
      "reward_zero_std_group_frac": jnp.mean((std < 1e-8).astype(jnp.float32)),
  }


def batch_advantages(rl: Any, group_size: int, rewards: Array, completion_mask: Array,
                     old_logp: Array, ref_logp: Array | None, values: Array | None
                     ) -> tuple[Array, Array | None]:
  """Token advantages [B, T] of one batch (and PPO's returns), dispatched on the `rl` spec.

  GRPO family: the group estimator of the sequence rewards, broadcast over completion tokens.
  PPO: the sequence reward at the last token (minus beta * KL per token when the KL goes into
  the reward), then GAE with the value head's values. SFT: 1 on every reference token.
  Optional whitening over the batch's completion tokens comes last.

  Args:
    rl: the validated `rl` section (`pbrl_jax.rl.spec.RLSpec`).
    group_size: completions per prompt (G consecutive rows).
    rewards: [B] sequence rewards (shaping terms included).
    completion_mask: [B, T] completion tokens.
    old_logp: [B, T] log-probs of the rollout policy (PPO's KL term).
    ref_logp: [B, T] log-probs of the reference policy (PPO's KL term), or None when no KL
      term is configured (`RLSpec.uses_reference`).
    values: [B, T] value-head values (PPO) or None.

  Returns:
    (advantages [B, T], returns [B, T] for PPO else None).
  """
  mask = completion_mask.astype(jnp.float32)
  if rl.is_sft:
    return mask, None
  returns = None
  if rl.is_ppo:
    if rl.kl_placement is kl_lib.KLPlacement.REWARD and rl.beta > 0:
      kl_tok = kl_lib.kl_estimate(rl.kl_estimator, old_logp, ref_logp)
      token_rewards = kl_lib.kl_penalized_rewards(rewards, kl_tok, mask, rl.beta)
    else:
      token_rewards = kl_lib.kl_penalized_rewards(rewards, jnp.zeros_like(mask), mask, 0.0)
    adv, returns = gae(token_rewards, values, mask, rl.gamma, rl.lam)
  else:
    adv = compute_group_advantages(rl.advantage, rewards, group_size, std_floor=rl.std_floor)
    adv = jnp.broadcast_to(adv[:, None], mask.shape) * mask
  if rl.whiten_advantages:
    adv = masked_whiten(adv, mask)
  return adv, returns
