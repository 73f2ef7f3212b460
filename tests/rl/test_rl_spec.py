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
