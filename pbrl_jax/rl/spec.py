"""The `rl` and `optim` config sections, validated once into frozen typed dataclasses.

Strings become enums here and nowhere else; the math below the trainer only sees enums,
floats and ints. Defaults live in `configs/rl_defaults.py`, not here: every field is required.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import optax

from pbrl_jax.config_schema import ConfigError, build
from pbrl_jax.rl import optim
from pbrl_jax.rl.advantages import AdvantageEstimator
from pbrl_jax.rl.kl import KLEstimator, KLPlacement
from pbrl_jax.rl.losses import Aggregation, ImportanceLevel, PolicyLoss, RolloutCorrection
from pbrl_jax.rl.steps import UpdateHParams


@dataclasses.dataclass(frozen=True)
class _RLSection:
  algorithm: Literal["grpo", "ppo", "sft"]
  advantage: str
  std_floor: float
  whiten_advantages: bool
  overlong_buffer: int
  overlong_penalty: float
  mask_truncated: bool
  dynamic_sampling_batches: int
  kl_estimator: str
  kl_placement: str
  beta: float
  kl_clamp: tuple[float, ...] | None
  kl_ratio_correction: bool
  policy_loss: str
  importance_level: str
  eps_low: float
  eps_high: float
  sapo_tau_pos: float
  sapo_tau_neg: float
  vespo_k_pos: float
  vespo_lambda_pos: float
  vespo_k_neg: float
  vespo_lambda_neg: float
  dual_clip: float | None
  loss_aggregation: str
  entropy_coef: float
  top_entropy_quantile: float
  rollout_correction: str
  rollout_correction_low: float | None
  rollout_correction_high: float | None
  value_coef: float
  value_clip: float | None
  gamma: float
  lam: float
  num_epochs: int
  num_minibatches: int
  num_microbatches: int
  shuffle: bool
  share_prompt: bool


@dataclasses.dataclass(frozen=True)
class RLSpec:
  """The validated `rl` section (see configs/rl_defaults.py for what each key means)."""

  is_ppo: bool
  is_sft: bool
  advantage: AdvantageEstimator
  std_floor: float
  whiten_advantages: bool
  overlong_buffer: int
  overlong_penalty: float
  mask_truncated: bool
  dynamic_sampling_batches: int
  kl_estimator: KLEstimator
  kl_placement: KLPlacement
  beta: float
  kl_clamp: tuple[float, float] | None
  kl_ratio_correction: bool
  policy_loss: PolicyLoss
  importance_level: ImportanceLevel
  eps_low: float
  eps_high: float
  sapo_tau_pos: float
  sapo_tau_neg: float
  vespo_k_pos: float
  vespo_lambda_pos: float
  vespo_k_neg: float
  vespo_lambda_neg: float
  dual_clip: float | None
  aggregation: Aggregation
  entropy_coef: float
  top_entropy_quantile: float
  rollout_correction: RolloutCorrection
  rollout_correction_low: float | None
  rollout_correction_high: float | None
  value_coef: float
  value_clip: float | None
  gamma: float
  lam: float
  num_epochs: int
  num_minibatches: int
  num_microbatches: int
  shuffle: bool
  share_prompt: bool

  @classmethod
  def from_config(cls, cd: Any) -> "RLSpec":
    s = build(_RLSection, cd, "config.rl")

    def parse(key: str, fn: Any, value: str) -> Any:
      try:
        return fn(value)
      except ValueError as e:
        raise ConfigError(f"config.rl.{key}: {e}") from e

    is_ppo = s.algorithm == "ppo"
    is_sft = s.algorithm == "sft"
    advantage = parse("advantage", AdvantageEstimator.parse, s.advantage)
    placement = parse("kl_placement", KLPlacement.parse, s.kl_placement)
    if not is_sft and is_ppo != (advantage is AdvantageEstimator.GAE):
      raise ConfigError(f"config.rl.advantage: {s.advantage!r} does not fit algorithm "
                        f"{s.algorithm!r} (PPO uses 'gae'; GRPO a group estimator)")
    if placement is KLPlacement.REWARD and not is_ppo:
      raise ConfigError("config.rl.kl_placement: 'reward' needs a critic (algorithm 'ppo')")
    if s.kl_clamp is not None and (len(s.kl_clamp) != 2 or s.kl_clamp[0] > s.kl_clamp[1]):
      raise ConfigError(f"config.rl.kl_clamp: expected (lo, hi) with lo <= hi, got {s.kl_clamp}")
    if s.dual_clip is not None and s.dual_clip <= 1.0:
      raise ConfigError(f"config.rl.dual_clip: must be > 1, got {s.dual_clip}")
    for key in ("sapo_tau_pos", "sapo_tau_neg", "vespo_lambda_pos", "vespo_lambda_neg"):
      if getattr(s, key) <= 0:
        raise ConfigError(f"config.rl.{key}: must be > 0, got {getattr(s, key)}")
    for key in ("vespo_k_pos", "vespo_k_neg"):
      if getattr(s, key) < 0:
        raise ConfigError(f"config.rl.{key}: must be >= 0, got {getattr(s, key)}")
    for key in ("eps_low", "eps_high", "beta", "std_floor", "entropy_coef", "value_coef",
                "overlong_buffer", "overlong_penalty"):
      if getattr(s, key) < 0:
        raise ConfigError(f"config.rl.{key}: must be >= 0, got {getattr(s, key)}")
    if not 0.0 < s.top_entropy_quantile <= 1.0:
      raise ConfigError("config.rl.top_entropy_quantile: must lie in (0, 1], got "
                        f"{s.top_entropy_quantile}")
    low, high = s.rollout_correction_low, s.rollout_correction_high
    if (low is not None and low < 0) or (high is not None and high <= 0) or (
        low is not None and high is not None and low > high):
      raise ConfigError("config.rl.rollout_correction_low/high: need 0 <= low <= high and "
                        f"high > 0 (None: no bound), got {low}, {high}")
    if s.dynamic_sampling_batches < 0 or (is_sft and s.dynamic_sampling_batches):
      raise ConfigError("config.rl.dynamic_sampling_batches: must be >= 0, and 0 for SFT "
                        f"(which samples nothing), got {s.dynamic_sampling_batches}")
    for key in ("num_epochs", "num_minibatches", "num_microbatches"):
      if getattr(s, key) < 1:
        raise ConfigError(f"config.rl.{key}: must be >= 1, got {getattr(s, key)}")
    if not (0.0 <= s.gamma <= 1.0 and 0.0 <= s.lam <= 1.0):
      raise ConfigError(f"config.rl.gamma/lam: must lie in [0, 1], got {s.gamma}, {s.lam}")
    if is_sft and (s.num_epochs != 1 or s.num_minibatches != 1):
      raise ConfigError("config.rl.num_epochs/num_minibatches: SFT takes one update per batch"
                        f" (unit advantages need ratio 1), got {s.num_epochs} and"
                        f" {s.num_minibatches}")
    # Every other key keeps its name and value: the hyperparameters are listed once, in
    # `_RLSection` (and their defaults in configs/rl_defaults.py).
    parsed = dict(
        is_ppo=is_ppo, is_sft=is_sft, advantage=advantage, kl_placement=placement,
        kl_estimator=parse("kl_estimator", KLEstimator.parse, s.kl_estimator),
        kl_clamp=None if s.kl_clamp is None else (float(s.kl_clamp[0]), float(s.kl_clamp[1])),
        aggregation=parse("loss_aggregation", Aggregation.parse, s.loss_aggregation),
        policy_loss=parse("policy_loss", PolicyLoss.parse, s.policy_loss),
        importance_level=parse("importance_level", ImportanceLevel.parse, s.importance_level),
        rollout_correction=parse("rollout_correction", RolloutCorrection.parse,
                                 s.rollout_correction))
    if is_sft and parsed["rollout_correction"] is not RolloutCorrection.OFF:
      raise ConfigError("config.rl.rollout_correction: SFT samples nothing to correct; set 'off'")
    if parsed["policy_loss"] is PolicyLoss.VESPO:
      # VESPO builds its sequence weight from token ratios, and a rollout correction joins
      # it token by token (TRL 1.16 refuses the sequence modes there too).
      if parsed["importance_level"] is not ImportanceLevel.TOKEN:
        raise ConfigError("config.rl.importance_level: 'vespo' builds its own sequence"
                          f" weight from token ratios; set 'token', got {s.importance_level!r}")
      if parsed["rollout_correction"].per_sequence:
        raise ConfigError("config.rl.rollout_correction: 'vespo' takes token_truncate or"
                          f" token_mask (or off), got {s.rollout_correction!r}")
    same = {f.name: getattr(s, f.name) for f in dataclasses.fields(cls)
            if f.name not in parsed}
    return cls(**parsed, **same)

  @property
  def uses_reference(self) -> bool:
    """Whether any term reads the reference policy's log-probs (a KL with beta > 0, in the
    loss or in the reward). Without one, scoring skips the reference forward, as TRL does at
    beta 0, and the `kl` metric is not logged (it was not measured; 0 would be a claim)."""
    return self.beta > 0 and self.kl_placement is not KLPlacement.NONE

  def prompt_group(self, group_size: int) -> int:
    """Rows per shared prompt in scoring and update: G with `share_prompt`, else 1."""
    return group_size if self.share_prompt and not self.is_sft and group_size > 1 else 1

  def update_hparams(self, temperature: float, max_completion_length: int,
                     prompt_group: int = 1) -> UpdateHParams:
    """The static hyperparameters of `make_update_fn`."""
    mine = {f.name for f in dataclasses.fields(self)}
    shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(UpdateHParams)
              if f.name in mine}  # eps_low, eps_high, aggregation, kl_*, epochs, ...
    return UpdateHParams(
        **shared, max_completion_length=max_completion_length,
        kl_coef_in_loss=self.beta if self.kl_placement is KLPlacement.LOSS else 0.0,
        temperature=temperature, with_value_head=self.is_ppo, prompt_group=prompt_group,
        ratio_to_self=self.is_sft)


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """The validated `optim` section."""

  learning_rate: float
  schedule: Literal["constant", "cosine"]
  warmup_steps: int
  end_lr_ratio: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  max_grad_norm: float | None

  @classmethod
  def from_config(cls, cd: Any) -> "OptimSpec":
    spec = build(cls, cd, "config.optim")
    if spec.learning_rate <= 0:
      raise ConfigError(f"config.optim.learning_rate: must be > 0, got {spec.learning_rate}")
    return spec

  def make(self, total_updates: int) -> optax.GradientTransformation:
    """The optimizer, its schedule counted in optimizer updates (`total_updates` in all)."""
    schedule = optim.make_schedule(optim.Schedule.parse(self.schedule), self.learning_rate,
                                   self.warmup_steps, total_updates, self.end_lr_ratio)
    return optim.make_optimizer(schedule, b1=self.b1, b2=self.b2, eps=self.eps,
                                weight_decay=self.weight_decay,
                                max_grad_norm=self.max_grad_norm)
