"""Semantically verifiable rewards: encoders, answer extraction, guards, hybrid scoring."""

from pbrl_jax.rewards.answers import (answers_match, extract_final_answer, gold_answer,
                                      split_reasoning_answer, verifiable_reward)
from pbrl_jax.rewards.encoders import TextEncoder, load_encoder
from pbrl_jax.rewards.score import (RewardModels, load_reward_models, reference_embeddings,
                                    score_batch)
from pbrl_jax.rewards.similarity import calibrated_cosine
from pbrl_jax.rewards.spec import RewardSpec
