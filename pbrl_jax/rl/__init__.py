"""RL core: advantages, losses, KL estimators, optimizer, train state and jitted steps."""

from pbrl_jax.rl.advantages import (AdvantageEstimator, compute_group_advantages,
                                    dr_grpo_advantages, gae, group_spread_metrics, group_std,
                                    grpo_advantages, masked_whiten, rank_advantages,
                                    rloo_advantages)
from pbrl_jax.rl.kl import (KLEstimator, KLPlacement, kl_estimate, kl_k1, kl_k2, kl_k3,
                            kl_penalized_rewards)
from pbrl_jax.rl.losses import (TRL_LOSS_TYPES, Aggregation, ImportanceLevel, PolicyLoss,
                                RolloutCorrection, aggregate, aggregation_denominator,
                                cispo_surrogate, clip_surrogate_of_weights, clipped_surrogate,
                                clipped_value_loss, entropy_quantile_mask, explained_variance,
                                log_importance_weights, policy_objective,
                                rollout_correction_weights, sapo_surrogate, vespo_log_weight,
                                vespo_surrogate)
from pbrl_jax.rl.optim import Schedule, make_optimizer, make_schedule
from pbrl_jax.rl.steps import (StateFns, TrainState, UpdateHParams, completion_outputs,
                               make_loss_fn, make_score_fn, make_state_fns,
                               make_update_fn, should_stop)
