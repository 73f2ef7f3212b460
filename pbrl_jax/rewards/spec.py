"""`RewardSpec`: the `reward` config section, validated once into a frozen dataclass.

Built by `config_schema.build`, as every other section: unknown, missing or mistyped keys
are errors naming the dotted key. The values, and why they are what they are, live in
configs/reward_defaults.py only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pbrl_jax.config_schema import ConfigError, build
from pbrl_jax.rewards.guards import GuardThresholds

# Guard fields that are ratios of lengths (any non-negative size); every other is in [0, 1].
_GUARD_UNBOUNDED = ("length_lo", "length_hi")
_GUARD_PAIRS = ("language", "copy", "copy_question", "length", "repetition")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """Everything `score_batch` needs, checked. Field meanings: configs/reward_defaults.py."""

  kind: Literal["hybrid", "embedding", "mt", "verifiable"]
  alpha: float
  encoder: str
  coherence: Literal["embedding", "mt"]
  answer_precision: Literal["graded", "match", "comet"]
  partial_credit: float
  format_weight: float
  numeric_rel_tol: float
  comet_path: str
  comet_activation: str
  comet_final_activation: str
  mt_backend: str
  mt_encoder: str
  mt_metric: Literal["cosine", "chrf"]
  apply_guards_to_verifiable: bool
  guards: GuardThresholds

  @property
  def uses_mt(self) -> bool:
    return self.kind == "mt" or (self.kind == "hybrid" and self.coherence == "mt")

  @property
  def uses_encoder(self) -> bool:
    return self.kind != "verifiable"

  @classmethod
  def from_config(cls, cfg: Any, key: str = "config.reward") -> "RewardSpec":
    """Builds and checks a spec from the `reward` ConfigDict (or a plain mapping)."""
    spec = build(cls, cfg, key)
    spec.check(key)
    return spec

  def check(self, key: str = "config.reward") -> None:
    """Ranges and the checks that span fields; each error names its dotted key."""
    for name in ("alpha", "partial_credit", "format_weight", "numeric_rel_tol"):
      _in_range(f"{key}.{name}", getattr(self, name), 1.0)
    for f in dataclasses.fields(GuardThresholds):
      hi = float("inf") if f.name in _GUARD_UNBOUNDED else 1.0
      _in_range(f"{key}.guards.{f.name}", getattr(self.guards, f.name), hi)
    for name in _GUARD_PAIRS:
      if getattr(self.guards, name + "_lo") > getattr(self.guards, name + "_hi"):
        raise ConfigError(f"{key}.guards.{name}_lo: must not exceed {name}_hi")
    if self.alpha + self.format_weight > 1.0 + 1e-9:
      raise ConfigError(f"{key}.format_weight: alpha ({self.alpha}) + format_weight "
                        f"({self.format_weight}) must not exceed 1 (coherence gets the rest)")
    if self.answer_precision == "comet" and not self.comet_path:
      raise ConfigError(f"{key}.comet_path: required when answer_precision is 'comet'")
    if self.uses_encoder and not self.encoder:
      raise ConfigError(f"{key}.encoder: required for kind {self.kind!r}")


def _in_range(key: str, value: float, hi: float) -> None:
  if not 0.0 <= value <= hi:
    raise ConfigError(f"{key}: {value!r} must be a number in [0, {hi}]")
