"""The rl/optim config sections validate into typed specs; bad values name the key."""

import pytest

from configs import rl_defaults
from pbrl_jax import rl
from pbrl_jax.config_schema import ConfigError
from pbrl_jax.rl import spec


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_defaults_validate(algorithm):
  c = rl_defaults.get_config(algorithm)
  r = spec.RLSpec.from_config(c.rl)
  assert r.is_ppo == (algorithm == "ppo")
  hp = r.update_hparams(temperature=0.7, max_completion_length=32)
  assert hp.with_value_head == r.is_ppo and hp.max_completion_length == 32
  # PPO puts the KL in the reward, so the loss has no KL term.
  assert hp.kl_coef_in_loss == (0.0 if r.is_ppo else c.rl.beta)
  assert spec.OptimSpec.from_config(c.optim).make(10) is not None


@pytest.mark.parametrize("key,value,match", [
    ("kl_estimator", "k4", "config.rl.kl_estimator"),
    ("loss_aggregation", "mean", "config.rl.loss_aggregation"),
    ("advantage", "gae", "config.rl.advantage"),
    ("kl_placement", "reward", "config.rl.kl_placement"),
    ("dual_clip", 0.5, "config.rl.dual_clip"),
    ("num_microbatches", 0, "config.rl.num_microbatches"),
    ("top_entropy_quantile", 0.0, "config.rl.top_entropy_quantile"),
    ("top_entropy_quantile", 1.5, "config.rl.top_entropy_quantile"),
    ("rollout_correction", "token", "config.rl.rollout_correction"),
    ("rollout_correction_high", 0.0, "config.rl.rollout_correction_low/high"),
    ("rollout_correction_low", 4.0, "config.rl.rollout_correction_low/high"),
    ("dynamic_sampling_batches", -1, "config.rl.dynamic_sampling_batches"),
    ("vespo_lambda_neg", 0.0, "config.rl.vespo_lambda_neg"),
    ("vespo_k_pos", -1.0, "config.rl.vespo_k_pos"),
])
def test_bad_values_name_the_key(key, value, match):
  c = rl_defaults.get_config("grpo").rl
  c[key] = value
  with pytest.raises(ConfigError, match=match):
    spec.RLSpec.from_config(c)


def test_aliases_match_trl_loss_types():
  assert rl.Aggregation.parse("dapo") is rl.Aggregation.TOKEN_MEAN
  assert rl.Aggregation.parse("grpo") is rl.Aggregation.SEQ_MEAN_TOKEN_MEAN
  assert rl.Aggregation.parse("dr_grpo") is rl.Aggregation.CONSTANT


def test_rollout_correction_and_entropy_mask_reach_the_update():
  c = rl_defaults.get_config("grpo").rl
  c.rollout_correction = "sequence_mask"
  c.rollout_correction_low = 0.5
  c.top_entropy_quantile = 0.2
  r = spec.RLSpec.from_config(c)
  assert r.rollout_correction is rl.RolloutCorrection.SEQUENCE_MASK
  assert (r.rollout_correction_low, r.rollout_correction_high) == (0.5, 3.0)
  assert r.update_hparams(1.0, 16).top_entropy_quantile == 0.2
  sft = rl_defaults.sft()
  sft.rollout_correction = "token_truncate"
  with pytest.raises(ConfigError, match="config.rl.rollout_correction: SFT"):
    spec.RLSpec.from_config(sft)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo", "sft"])
def test_every_update_setting_of_a_run_comes_from_the_config(algorithm):
  """`UpdateHParams` keeps library defaults for direct callers; none may reach a trainer run.

  Every field is either an `RLSpec` field (a `config.rl` key) or set by `update_hparams` from
  the rollout section, so a new knob added only to `UpdateHParams` fails here.
  """
  import dataclasses  # pylint: disable=import-outside-toplevel
  c = rl_defaults.get_config(algorithm).rl
  r = spec.RLSpec.from_config(c)
  from_rollout = {"max_completion_length": 17, "temperature": 0.55, "prompt_group": 3}
  hp = r.update_hparams(**from_rollout)
  config_keys = {f.name for f in dataclasses.fields(spec.RLSpec)}
  # from rl.beta/kl_placement/algorithm
  derived = {"kl_coef_in_loss", "with_value_head", "ratio_to_self"}
  for f in dataclasses.fields(rl.UpdateHParams):
    assert f.name in config_keys | set(from_rollout) | derived, f.name
    if f.name in config_keys:
      assert getattr(hp, f.name) == getattr(r, f.name), f.name
    elif f.name in from_rollout:
      assert getattr(hp, f.name) == from_rollout[f.name], f.name
  assert hp.with_value_head is r.is_ppo
  assert hp.ratio_to_self is r.is_sft
  assert hp.kl_coef_in_loss == (r.beta if r.kl_placement is rl.KLPlacement.LOSS else 0.0)


def test_vespo_takes_token_weights_only():
  c = rl_defaults.get_config("grpo").rl
  c.policy_loss = "vespo"
  hp = spec.RLSpec.from_config(c).update_hparams(1.0, 16)
  assert hp.policy_loss is rl.PolicyLoss.VESPO and hp.vespo_lambda_pos == c.vespo_lambda_pos
  c.rollout_correction = "token_mask"
  spec.RLSpec.from_config(c)
  c.rollout_correction = "sequence_truncate"
  with pytest.raises(ConfigError, match="config.rl.rollout_correction: 'vespo'"):
    spec.RLSpec.from_config(c)
  c.rollout_correction = "off"
  c.importance_level = "sequence"
  with pytest.raises(ConfigError, match="config.rl.importance_level: 'vespo'"):
    spec.RLSpec.from_config(c)
