"""PPO/GRPO loss terms as per-token arrays, and their aggregation into (sum, denominator).

Axis letters: B sequences, T completion tokens. Each loss term is computed per token, then
`aggregate` turns it into an unreduced sum and a denominator; the update step divides once,
after summing both over micro-batches, so gradient accumulation is exact for every
aggregation mode.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

Array = jax.Array


class Aggregation(enum.Enum):
  """How per-token losses become one scalar.

  TOKEN_MEAN: sum over all tokens / number of tokens ('dapo', 'bnpo'; Yu et al. 2025, DAPO,
    arXiv 2503.14476, eq. 8).
  SEQ_MEAN_TOKEN_MEAN: mean over sequences of each sequence's token-mean ('grpo'; Shao et al.
    2024, arXiv 2402.03300, eq. 3).
  CONSTANT: sum over all tokens / (num_sequences * max_completion_length) ('dr_grpo'; Liu et
    al. 2025, arXiv 2503.20783, sec. 3.2).
  """

  TOKEN_MEAN = "token_mean"
  SEQ_MEAN_TOKEN_MEAN = "seq_mean_token_mean"
  CONSTANT = "constant"

  @classmethod
  def parse(cls, name: str) -> "Aggregation":
    """Accepts our names and TRL's loss_type names ('dapo', 'bnpo', 'grpo', 'dr_grpo')."""
    alias = {"dapo": cls.TOKEN_MEAN, "bnpo": cls.TOKEN_MEAN, "grpo": cls.SEQ_MEAN_TOKEN_MEAN,
             "dr_grpo": cls.CONSTANT}
    if name in alias:
      return alias[name]
    try:
      return cls(name)
    except ValueError as e:
      raise ValueError(f"loss aggregation {name!r}; expected one of"
                       f" {[m.value for m in cls] + sorted(alias)}") from e


def aggregate(per_token: Array, mask: Array, mode: Aggregation,
              max_completion_length: int | None = None) -> tuple[Array, Array]:
  """Unreduced sum and denominator of a per-token quantity; the loss is sum / denominator.

    TOKEN_MEAN:           (sum_bt l m,                 sum_bt m)
    SEQ_MEAN_TOKEN_MEAN:  (sum_b [sum_t l m / max(sum_t m, 1)],  B)
    CONSTANT:             (sum_bt l m,                 B * max_completion_length)

  Sums and denominators add over disjoint micro-batches, so (sum_1 + sum_2) / (den_1 + den_2)
  is the full-batch value. Callers clamp the total denominator at 1 (TRL's `.clamp(min=1)`).

  Args:
    per_token: [B,T] loss per token.
    mask: [B,T] 1 for tokens that count.
    mode: validated aggregation.
    max_completion_length: the constant of CONSTANT mode (defaults to T).

  Returns:
    (sum, denominator), float32 scalars.
  """
  m = mask.astype(per_token.dtype)
  masked = per_token * m
  if mode is Aggregation.TOKEN_MEAN:
    return jnp.sum(masked), jnp.sum(m)
  if mode is Aggregation.SEQ_MEAN_TOKEN_MEAN:
    per_seq = jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    return jnp.sum(per_seq), jnp.asarray(per_token.shape[0], per_token.dtype)
  if mode is Aggregation.CONSTANT:
    length = per_token.shape[1] if max_completion_length is None else max_completion_length
    return jnp.sum(masked), jnp.asarray(per_token.shape[0] * length, per_token.dtype)
  raise ValueError(f"unknown aggregation {mode}")


def aggregation_denominator(mask: Array, mode: Aggregation,
                            max_completion_length: int | None = None) -> Array:
  """The denominator of `aggregate` alone (it depends on the mask only, not on params)."""
  return aggregate(jnp.zeros(mask.shape, jnp.float32), mask, mode, max_completion_length)[1]


def clipped_surrogate(logp: Array, old_logp: Array, advantages: Array, eps_low: float,
                      eps_high: float, dual_clip: float | None = None
                      ) -> tuple[Array, Array, Array]:
  """Per-token PPO clipped surrogate loss with asymmetric clipping.

    rho_t = exp(log pi(y_t) - log pi_old(y_t))
    l_t   = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)

  Schulman et al. 2017, PPO, arXiv 1707.06347, eq. 7; asymmetric "clip-higher" from DAPO
  (arXiv 2503.14476, eq. 10). With `dual_clip = c > 1` (Ye et al. 2020, arXiv 1912.09729,
  eq. 5), negative-advantage tokens are further bounded: l_t = min(l_t, -c A_t).

  Args:
    logp: [B,T] log-probs under the current policy (differentiated).
    old_logp: [B,T] log-probs under the policy that sampled (constant).
    advantages: [B,T], or [B] broadcast over tokens.
    eps_low: lower clip range.
    eps_high: upper clip range.
    dual_clip: dual-clip constant c > 1, or None.

  Returns:
    (per-token loss [B,T], low-clipped indicator, high-clipped indicator), indicators as
    float (TRL's definition: rho < 1 - eps_low with A < 0; rho > 1 + eps_high with A > 0).
  """
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  ratio = jnp.exp(logp - old_logp)
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  loss = -jnp.minimum(ratio * advantages, clipped * advantages)
  if dual_clip is not None:
    loss = jnp.where(advantages < 0, jnp.minimum(loss, -dual_clip * advantages), loss)
  low = ((ratio < 1.0 - eps_low) & (advantages < 0)).astype(logp.dtype)
  high = ((ratio > 1.0 + eps_high) & (advantages > 0)).astype(logp.dtype)
  return loss, low, high


def clipped_value_loss(values: Array, old_values: Array, returns: Array,
                       clip_range: float | None) -> tuple[Array, Array]:
  """Per-token clipped value loss.

    v_clip = V_old + clip(V - V_old, -eps_v, eps_v)
    l_t    = 1/2 max((V - R)^2, (v_clip - R)^2)

  PPO as implemented in OpenAI baselines ppo2 and TRL's old PPOTrainer (`cliprange_value`).
  With `clip_range=None`, l_t = 1/2 (V - R)^2.

  Returns:
    (per-token loss [B,T], indicator [B,T] of tokens whose value moved more than the clip
    range and where the clipped branch is the larger, i.e. the one in use).
  """
  unclipped = jnp.square(values - returns)
  if clip_range is None:
    return 0.5 * unclipped, jnp.zeros_like(values)
  v_clip = old_values + jnp.clip(values - old_values, -clip_range, clip_range)
  clipped = jnp.square(v_clip - returns)
  active = (jnp.abs(values - old_values) > clip_range) & (clipped > unclipped)
  return 0.5 * jnp.maximum(unclipped, clipped), active.astype(values.dtype)


def explained_variance(values: Array, returns: Array, mask: Array) -> Array:
  """1 - Var[R - V] / Var[R] over masked tokens (1: perfect critic, <= 0: useless)."""
  m = mask.astype(values.dtype)
  n = jnp.maximum(jnp.sum(m), 1.0)

  def var(x: Array) -> Array:
    mean = jnp.sum(x * m) / n
    return jnp.sum(jnp.square(x - mean) * m) / n

  return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-12)
