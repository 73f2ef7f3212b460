"""PPO/GRPO loss terms as per-token arrays, and their aggregation into (sum, denominator).

Axis letters: B sequences, T completion tokens. Each loss term is computed per token, then
`aggregate` turns it into an unreduced sum and a denominator; the update step divides once,
after summing both over micro-batches, so gradient accumulation is exact for every
aggregation mode.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from pbrl_jax.config_schema import Choice
from pbrl_jax.rl import kl as kl_lib

if TYPE_CHECKING:  # the update's hyperparameters; rl.steps imports this module
  from pbrl_jax.rl.steps import UpdateHParams

Array = jax.Array


class Aggregation(Choice):
  """How per-token losses become one scalar.

  TOKEN_MEAN: sum over all tokens / number of tokens ('dapo', 'bnpo'; Yu et al. 2025, DAPO,
    arXiv 2503.14476, eq. 8).
  SEQ_MEAN_TOKEN_MEAN: mean over sequences of each sequence's token-mean ('grpo'; Shao et al.
    2024, arXiv 2402.03300, eq. 3).
  CONSTANT: sum over all tokens / (num_sequences * max_completion_length) ('dr_grpo'; Liu et
    al. 2025, arXiv 2503.20783, sec. 3.2).
  SEQ_SUM: mean over sequences of each sequence's token-sum ('luspo': with sequence-level
    importance weights, each sequence's term scaled by its length; LUSPO, arXiv 2602.05261).
  """

  TOKEN_MEAN = "token_mean"
  SEQ_MEAN_TOKEN_MEAN = "seq_mean_token_mean"
  CONSTANT = "constant"
  SEQ_SUM = "seq_sum"

  @classmethod
  def aliases(cls) -> dict[str, "Aggregation"]:
    """TRL's loss_type names of plain aggregations ('dapo', 'bnpo', 'grpo', 'dr_grpo'; see
    `TRL_LOSS_TYPES` for the others), accepted beside ours."""
    return {"dapo": cls.TOKEN_MEAN, "bnpo": cls.TOKEN_MEAN, "grpo": cls.SEQ_MEAN_TOKEN_MEAN,
            "dr_grpo": cls.CONSTANT}


def aggregate(per_token: Array, mask: Array, mode: Aggregation,
              max_completion_length: int | None = None) -> tuple[Array, Array]:
  """Unreduced sum and denominator of a per-token quantity; the loss is sum / denominator.

    TOKEN_MEAN:           (sum_bt l m,                 sum_bt m)
    SEQ_MEAN_TOKEN_MEAN:  (sum_b [sum_t l m / max(sum_t m, 1)],  B)
    CONSTANT:             (sum_bt l m,                 B * max_completion_length)
    SEQ_SUM:              (sum_bt l m,                 B)

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
  if mode is Aggregation.SEQ_SUM:
    return jnp.sum(masked), jnp.asarray(per_token.shape[0], per_token.dtype)
  raise ValueError(f"unknown aggregation {mode}")


def aggregation_denominator(mask: Array, mode: Aggregation,
                            max_completion_length: int | None = None) -> Array:
  """The denominator of `aggregate` alone (it depends on the mask only, not on params)."""
  return aggregate(jnp.zeros(mask.shape, jnp.float32), mask, mode, max_completion_length)[1]


class PolicyLoss(Choice):
  """The per-token policy term, from the importance weight w (token or sequence level).

  CLIP: PPO's clipped surrogate -min(w A, clip(w, 1 - eps_low, 1 + eps_high) A) (GRPO, DAPO,
    Dr.GRPO; GSPO and LUSPO at sequence level).
  CISPO: -sg(min(w, eps_high)) A log pi: the weight is clipped and detached instead of the
    surrogate, so every token keeps its gradient (MiniMax-M1, arXiv 2506.13585; eps_high is
    the paper's eps_max, 5.0 in ScaleRL).
  SAPO: -(4 / tau) sigmoid(tau (w - 1)) A, tau = tau_pos for A > 0 else tau_neg: a soft gate
    in place of the hard clip, with the surrogate's gradient at w = 1 (SAPO, arXiv
    2511.20347).
  VESPO: -sg(phi(W)) A log pi with W the sequence's product of token ratios and the Gamma
    weight phi(W) = exp(lam + k log W - lam W) (phi(1) = 1; k, lam by the advantage's sign):
    a smooth, asymmetric down-weighting of off-policy sequences in place of the clip (VESPO,
    arXiv 2602.10693; `vespo_surrogate`). It builds its own W, so it takes token weights.
  """

  CLIP = "clip"
  CISPO = "cispo"
  SAPO = "sapo"
  VESPO = "vespo"


class ImportanceLevel(Choice):
  """TOKEN: w_t = pi(y_t) / pi_old(y_t). SEQUENCE: one w per sequence, the exponent of the
  token-mean log-ratio (GSPO, arXiv 2507.18071, eq. 7; TRL `importance_sampling_level`)."""

  TOKEN = "token"
  SEQUENCE = "sequence"


class RolloutCorrection(Choice):
  """Correction of the sampler/trainer mismatch: the rollout was drawn from the sampler's
  distribution, the update's old log-probs come from the trainer's forward, and the two differ
  when their numerics do (bfloat16 sampling, another kernel or cache layout). Each token's
  policy term is multiplied by the detached weight rho = pi_trainer / pi_sampler: per token,
  or one per sequence (the exponent of the summed log-ratio), truncated into [low, high] or
  set to 0 outside it (TRL 1.16's `vllm_importance_sampling_mode`; truncated IS, Yao et al.
  2025, "Your efficient RL framework secretly brings you off-policy RL training").
  """

  OFF = "off"
  TOKEN_TRUNCATE = "token_truncate"
  TOKEN_MASK = "token_mask"
  SEQUENCE_TRUNCATE = "sequence_truncate"
  SEQUENCE_MASK = "sequence_mask"


  @property
  def per_sequence(self) -> bool:
    return self in (RolloutCorrection.SEQUENCE_TRUNCATE, RolloutCorrection.SEQUENCE_MASK)

  @property
  def masks(self) -> bool:
    return self in (RolloutCorrection.TOKEN_MASK, RolloutCorrection.SEQUENCE_MASK)


def rollout_correction_weights(trainer_logp: Array, sampler_logp: Array, mask: Array,
                               mode: RolloutCorrection, low: float | None,
                               high: float | None) -> tuple[Array, dict[str, Array]]:
  """Per-token weights [B,T] of the policy term, and the mismatch statistics.

  log rho_t = (trainer_logp_t - sampler_logp_t) m_t; per sequence, log rho = sum_t log rho_t
  for every token of the row. Truncate: rho <- clip(rho, low, high); mask: rho <- 0 outside
  [low, high]. A missing bound is no bound. The weights carry no gradient.

  Statistics (host metrics): `mismatch/logp_diff_mean` / `_max`: mean and max of
  |trainer - sampler| log-prob over valid tokens; `mismatch/is_ratio_min` / `_mean` / `_max`:
  rho before bounding, over valid tokens (per token) or over rows with a valid token (per
  sequence); `mismatch/bounded_frac`: the share of valid tokens whose weight was truncated
  or masked.
  """
  if mode is RolloutCorrection.OFF:
    raise ValueError("rollout_correction_weights: mode is OFF")
  dtype = jnp.promote_types(jnp.result_type(trainer_logp, sampler_logp), jnp.float32)
  m = mask.astype(dtype)
  valid = m > 0
  diff = (trainer_logp.astype(dtype) - sampler_logp.astype(dtype)) * m
  if mode.per_sequence:
    log_rho = jnp.broadcast_to(jnp.sum(diff, axis=-1, keepdims=True), diff.shape)
    # The ratio statistics count each row with a valid token once (its column 0).
    counted = jnp.zeros_like(valid).at[:, 0].set(jnp.any(valid, axis=-1))
  else:
    log_rho = diff
    counted = valid
  rho = jnp.exp(log_rho)
  lo = -jnp.inf if low is None else low
  hi = jnp.inf if high is None else high
  outside = (rho < lo) | (rho > hi)
  weights = jnp.where(outside, 0.0, rho) if mode.masks else jnp.clip(rho, lo, hi)
  n_tok = jnp.maximum(jnp.sum(m), 1.0)
  n_counted = jnp.maximum(jnp.sum(counted), 1)
  abs_diff = jnp.abs(diff)
  stats = {
      "mismatch/logp_diff_mean": jnp.sum(abs_diff) / n_tok,
      "mismatch/logp_diff_max": jnp.max(jnp.where(valid, abs_diff, 0.0)),
      "mismatch/is_ratio_min": jnp.min(jnp.where(counted, rho, jnp.inf)),
      "mismatch/is_ratio_mean": jnp.sum(jnp.where(counted, rho, 0.0)) / n_counted,
      "mismatch/is_ratio_max": jnp.max(jnp.where(counted, rho, -jnp.inf)),
      "mismatch/bounded_frac": jnp.sum(outside * m) / n_tok,
  }
  return jax.lax.stop_gradient(weights), stats


def entropy_quantile_mask(entropy: Array, mask: Array, quantile: float) -> Array:
  """1 on the valid tokens whose entropy is at least the (1 - quantile) quantile of the valid
  tokens' entropies (linear interpolation, as `torch.quantile`), else 0; no gradient.

  The policy term then trains only the highest-entropy `quantile` of the tokens ("Beyond the
  80/20 rule", Wang et al. 2025, arXiv 2506.01939; TRL's `top_entropy_quantile` rho). The
  quantile is taken over the whole array passed in: the micro-batch in the update, as TRL
  takes it over each loss call's batch.
  """
  valid = mask > 0
  entropy = entropy.astype(jnp.promote_types(entropy.dtype, jnp.float32))
  threshold = jnp.nanquantile(jnp.where(valid, entropy, jnp.nan), 1.0 - quantile)
  keep = valid & (entropy >= threshold)  # no valid token: threshold is NaN, nothing kept
  return jax.lax.stop_gradient(keep.astype(entropy.dtype))


# TRL 1.16 `loss_type` -> (policy loss, aggregation, importance level it needs or None).
TRL_LOSS_TYPES = {
    "grpo": ("clip", "seq_mean_token_mean", None),
    "bnpo": ("clip", "token_mean", None),
    "dapo": ("clip", "token_mean", None),
    "dr_grpo": ("clip", "constant", None),
    "cispo": ("cispo", "token_mean", None),
    "sapo": ("sapo", "seq_mean_token_mean", None),
    "luspo": ("clip", "seq_sum", "sequence"),
    "vespo": ("vespo", "token_mean", "token"),
}


def log_importance_weights(logp: Array, old_logp: Array, mask: Array,
                           level: ImportanceLevel) -> Array:
  """log w: [B,T] per token, or [B,1] per sequence (the masked mean of the token log-ratios;
  its gradient reaches every token of the sequence)."""
  log_ratio = logp - old_logp
  if level is ImportanceLevel.TOKEN:
    return log_ratio
  m = mask.astype(log_ratio.dtype)
  return (jnp.sum(log_ratio * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0))[:, None]


def clip_surrogate_of_weights(weights: Array, advantages: Array, eps_low: float,
                              eps_high: float, dual_clip: float | None = None
                              ) -> tuple[Array, Array, Array]:
  """`clipped_surrogate` from importance weights [B,T] or [B,1] (see there)."""
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  clipped = jnp.clip(weights, 1.0 - eps_low, 1.0 + eps_high)
  loss = -jnp.minimum(weights * advantages, clipped * advantages)
  if dual_clip is not None:
    loss = jnp.where(advantages < 0, jnp.minimum(loss, -dual_clip * advantages), loss)
  low = ((weights < 1.0 - eps_low) & (advantages < 0)).astype(weights.dtype)
  high = ((weights > 1.0 + eps_high) & (advantages > 0)).astype(weights.dtype)
  return loss, low, high


def cispo_surrogate(logp: Array, weights: Array, advantages: Array, eps_high: float
                    ) -> tuple[Array, Array]:
  """Per-token CISPO loss -sg(min(w, eps_high)) A log pi, and where the weight was clipped
  (w > eps_high with A > 0, TRL's `cispo_clip_ratio`)."""
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  coef = jax.lax.stop_gradient(jnp.minimum(weights, eps_high))
  clipped = ((weights > eps_high) & (advantages > 0)).astype(logp.dtype)
  return -coef * advantages * logp, jnp.broadcast_to(clipped, logp.shape)


def sapo_surrogate(weights: Array, advantages: Array, tau_pos: float, tau_neg: float
                   ) -> Array:
  """Per-token SAPO loss -(4 / tau) sigmoid(tau (w - 1)) A, tau by the advantage's sign."""
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  tau = jnp.where(advantages > 0, tau_pos, tau_neg)
  return -jax.nn.sigmoid(tau * (weights - 1.0)) * 4.0 / tau * advantages


# VESPO's bounds on log-ratios, as the paper's code (and TRL 1.16) set them: each token's
# log-ratio is clipped to +-20 before the sum, log W and each log rollout weight to
# [log 1e-8, 20], so exp never overflows.
VESPO_TOKEN_LOG_CLIP = 20.0
VESPO_LOG_W_MIN = math.log(1e-8)


def vespo_log_weight(logp: Array, old_logp: Array, mask: Array,
                     rollout_weight: Array | None = None) -> Array:
  """log W [B,1]: the masked sum of clipped token log-ratios, plus the log of a rollout
  correction's token weights (their product joins the ratio to the sampler), clipped."""
  m = mask.astype(logp.dtype)
  log_ratio = jnp.clip(logp - old_logp, -VESPO_TOKEN_LOG_CLIP, VESPO_TOKEN_LOG_CLIP)
  log_w = jnp.sum(log_ratio * m, axis=-1, keepdims=True)
  if rollout_weight is not None:
    # A masked-out token's weight is 0: log clipped to log 1e-8, which sinks the sequence.
    log_rho = jnp.clip(jnp.log(rollout_weight.astype(logp.dtype)), VESPO_LOG_W_MIN,
                       VESPO_TOKEN_LOG_CLIP)
    log_w = log_w + jnp.sum(log_rho * m, axis=-1, keepdims=True)
  return jnp.clip(log_w, VESPO_LOG_W_MIN, VESPO_TOKEN_LOG_CLIP)


def vespo_surrogate(logp: Array, log_w: Array, advantages: Array, k_pos: float,
                    lambda_pos: float, k_neg: float, lambda_neg: float
                    ) -> tuple[Array, Array]:
  """Per-token VESPO loss -sg(phi(W)) A log pi, and phi [B,1].

  phi(W) = exp(lam + k log W - lam W): 1 at W = 1, falling off both ways (faster below W = 1
  the larger k, above it the larger lam); (k, lam) = (k_pos, lambda_pos) where A >= 0, else
  the negative pair. lam is floored at 1e-4 and a non-finite phi counts as 0 (TRL 1.16 does
  both). The weight is detached: the gradient is phi A grad log pi.
  """
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  nonneg = advantages >= 0
  k = jnp.where(nonneg, k_pos, k_neg)
  lam = jnp.maximum(jnp.where(nonneg, lambda_pos, lambda_neg), 1e-4)
  phi = jnp.exp(lam + k * log_w - lam * jnp.exp(log_w))
  phi = jax.lax.stop_gradient(jnp.where(jnp.isfinite(phi), phi, 0.0))
  return -phi * advantages * logp, phi


def policy_objective(logp: Array, old_logp: Array, ref_logp: Array | None, advantages: Array,
                     mask: Array, hp: "UpdateHParams", pg_weight: Array | None = None,
                     rollout_weight: Array | None = None
                     ) -> tuple[Array, Array, dict[str, Array]]:
  """The policy term of the loss as (sum, denominator), plus its per-token pieces.

    l_t = c_t pg_t(w) + beta kl_t [w]
    pg_t = -min(w A, clip(w, 1 - eps_low, 1 + eps_high) A)      (hp.policy_loss CLIP)
    loss = aggregate(l, mask) = sum / denominator

  w: the importance weight per token or per sequence (`hp.importance_level`, GSPO); CISPO,
  SAPO and VESPO replace pg_t (`PolicyLoss`). [w] only with `hp.kl_ratio_correction`.
  c_t: the constants `pg_weight` (top-entropy mask) times `rollout_weight` (the rollout
  correction), 1 when None, on the policy term only, as TRL; VESPO folds `rollout_weight`
  into its sequence weight instead, as TRL does. The denominators keep every valid token.
  `ref_logp` None (no reference forward): no KL piece, which needs `hp.kl_coef_in_loss` 0.

  (GRPO: Shao et al. 2024, arXiv 2402.03300, eq. 3 with the KL inside the per-token term,
  as TRL's GRPOTrainer does; beta = `hp.kl_coef_in_loss`, kl_t by `hp.kl_estimator`.)
  """
  weights = jnp.exp(log_importance_weights(logp, old_logp, mask, hp.importance_level))
  zeros = jnp.zeros_like(logp)
  if hp.policy_loss is PolicyLoss.CISPO:
    pg, high = cispo_surrogate(logp, weights, advantages, hp.eps_high)
    low = zeros
  elif hp.policy_loss is PolicyLoss.SAPO:
    pg = sapo_surrogate(weights, advantages, hp.sapo_tau_pos, hp.sapo_tau_neg)
    low = high = zeros
  elif hp.policy_loss is PolicyLoss.VESPO:
    log_w = vespo_log_weight(logp, old_logp, mask, rollout_weight)
    pg, phi = vespo_surrogate(logp, log_w, advantages, hp.vespo_k_pos, hp.vespo_lambda_pos,
                              hp.vespo_k_neg, hp.vespo_lambda_neg)
    low, high, rollout_weight = zeros, zeros, None  # the rollout weights are inside phi
  else:
    pg, low, high = clip_surrogate_of_weights(weights, advantages, hp.eps_low, hp.eps_high,
                                              hp.dual_clip)
  pg, low, high = (jnp.broadcast_to(x, logp.shape) for x in (pg, low, high))
  for weight in (pg_weight, rollout_weight):
    if weight is not None:
      pg = pg * jax.lax.stop_gradient(weight)
  ratio = jnp.broadcast_to(weights, logp.shape)
  pieces = {"pg": pg, "clip_low": low, "clip_high": high, "ratio": ratio}
  if hp.policy_loss is PolicyLoss.VESPO:
    pieces["vespo_phi"] = jnp.broadcast_to(phi, logp.shape)
  per_token = pg
  if ref_logp is None:
    if hp.kl_coef_in_loss:
      raise ValueError(f"kl_coef_in_loss {hp.kl_coef_in_loss} needs the reference log-probs"
                       " (the batch has no ref_logp)")
  else:
    kl = pieces["kl"] = kl_lib.kl_estimate(hp.kl_estimator, logp, ref_logp, hp.kl_clamp)
    if hp.kl_coef_in_loss:
      kl_term = kl * ratio if hp.kl_ratio_correction else kl
      per_token = pg + hp.kl_coef_in_loss * kl_term
  total, den = aggregate(per_token, mask, hp.aggregation, hp.max_completion_length)
  return total, den, pieces


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
  return clip_surrogate_of_weights(jnp.exp(logp - old_logp), advantages, eps_low, eps_high,
                                   dual_clip)


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
