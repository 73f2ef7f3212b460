"""Defaults of the `rl` and `optim` config sections (every value is our choice, not the paper's).

PB-RLSVR (arXiv 2509.25543) trains with a GRPO-based update and compares with PPO; its
hyperparameters are not public. Other libraries' defaults, and the presets we use to compare
with them, are in docs/presets.md. Use from another config:

  from configs import rl_defaults
  d = rl_defaults.get_config("grpo")   # or "ppo"
  config.rl, config.optim = d.rl, d.optim

`pbrl_jax.rl.spec.RLSpec.from_config(config.rl)` and `OptimSpec.from_config(config.optim)`
validate the sections once.
"""

import ml_collections
from ml_collections import config_dict


def grpo() -> ml_collections.ConfigDict:
  """GRPO: group-relative advantages, k3 KL in the loss, sequence-mean of token-means."""
  c = ml_collections.ConfigDict()
  c.algorithm = "grpo"
  # 'grpo' (mean/std), 'dr_grpo' (mean only), 'rloo' (leave-one-out), 'rank', 'gae' (PPO).
  c.advantage = "grpo"
  # Cosine rewards cluster tightly; a floor on the group std keeps noise from being amplified
  # into full-size advantages (0.05: about a twentieth of the usable reward range).
  c.std_floor = 0.05
  # Masked whitening of the advantages over the whole batch (PPO keeps it on).
  c.whiten_advantages = False
  # DAPO's soft overlong punishment: a completion longer than max_new_tokens - overlong_buffer
  # tokens loses up to overlong_penalty reward, linearly, the full amount at the length cap.
  # 0: off. The reward then says nothing about stopping, and a policy that rambles into the
  # cap is never told to stop (pbrl_jax.rl.shaping).
  c.overlong_buffer = 0
  c.overlong_penalty = 1.0
  # DAPO's overlong filtering: completions cut by the length cap leave the policy loss (their
  # reward still counts in the group baseline). An alternative to the soft punishment that
  # adds nothing to the reward, so it cannot swamp it (TRL: mask_truncated_completions).
  c.mask_truncated = False
  # DAPO's dynamic sampling: groups whose rewards are all equal (zero advantages) are replaced
  # by the informative groups of up to this many further prompt batches per step; the batch
  # is then scored again. 0: off. Logged: dynamic/informative_frac_first,
  # dynamic/informative_frac, dynamic/extra_batches. Each extra batch costs a rollout and a
  # scoring pass.
  c.dynamic_sampling_batches = 0
  # 'k1', 'k2', 'k3' (Schulman's estimators). k3: unbiased and non-negative in the loss.
  c.kl_estimator = "k3"
  # 'loss' (GRPO), 'reward' (PPO: -beta * kl per token in the reward), 'none'.
  c.kl_placement = "loss"
  # 0.04: DeepSeekMath's beta (TRL's GRPO default is 0, tunix's 0.04). We keep a reference
  # term because the semantic reward can be gamed by drifting away from fluent text. At beta 0
  # (or placement 'none') no reference forward is run and no `kl` metric is logged.
  c.beta = 0.04
  # Optional (lo, hi) clamp of the per-token KL estimate; None: unclamped.
  c.kl_clamp = config_dict.placeholder(tuple)  # None; a command line can still set it
  # Multiply the KL term by the importance ratio (TRL 1.16 `use_bias_correction_kl`, default
  # True there). Off: with one update per rollout the ratio is 1 and it changes nothing.
  c.kl_ratio_correction = False
  # The per-token policy term: 'clip' (PPO's clipped surrogate: GRPO, DAPO, Dr.GRPO, and GSPO
  # or LUSPO with sequence-level weights), 'cispo' (clipped, detached weight times log pi;
  # set eps_high to its eps_max, 5.0 in ScaleRL), 'sapo' (a soft sigmoid gate) or 'vespo'
  # (a detached Gamma weight of the sequence's ratio times log pi; token importance_level).
  c.policy_loss = "clip"
  # Importance weights per 'token', or per 'sequence' (GSPO: exp of the token-mean log-ratio).
  c.importance_level = "token"
  # Clip range of the ratio, low and high (DAPO's clip-higher uses eps_high 0.28).
  c.eps_low = 0.2
  c.eps_high = 0.2
  # SAPO's gate temperatures for positive and non-positive advantages (TRL's defaults).
  c.sapo_tau_pos = 1.0
  c.sapo_tau_neg = 1.05
  # VESPO's Gamma weight phi(W) = exp(lam + k log W - lam W) of the sequence ratio W: k sets
  # how fast W < 1 is down-weighted, lam how fast W > 1; pairs for A >= 0 and A < 0 (the
  # paper's and TRL 1.16's defaults).
  c.vespo_k_pos = 2.0
  c.vespo_lambda_pos = 3.0
  c.vespo_k_neg = 3.0
  c.vespo_lambda_neg = 2.0
  # Dual-clip constant (> 1) for negative advantages; None: off.
  c.dual_clip = config_dict.placeholder(float)
  # 'seq_mean_token_mean' (='grpo'), 'token_mean' (='dapo'), 'constant' (='dr_grpo'),
  # 'seq_sum' (LUSPO, with importance_level 'sequence': each sequence scaled by its length).
  c.loss_aggregation = "seq_mean_token_mean"
  # Entropy bonus coefficient (token mean, subtracted from the loss). 0: off.
  c.entropy_coef = 0.0
  # rho in (0, 1]: only the tokens in the top rho of each micro-batch's entropies carry the
  # policy term ("Beyond the 80/20 rule": 0.2; TRL's top_entropy_quantile). 1: every token.
  c.top_entropy_quantile = 1.0
  # Sampler/trainer mismatch correction: the policy term of each token is weighted by
  # pi_trainer / pi_sampler, per token or per sequence, truncated into [low, high] or masked
  # outside it: 'off', 'token_truncate', 'token_mask', 'sequence_truncate', 'sequence_mask'
  # (TRL's vllm_importance_sampling_mode; TRL defaults to sequence_mask with high 3). Off here:
  # our sampler and trainer run the same model code in the same dtype, so the weights are 1 up
  # to rounding; turn it on when sampling runs in bfloat16 or on another engine. Not 'off'
  # costs one more policy forward per step (the trainer's own old log-probs). Logged:
  # mismatch/logp_diff_mean|max, mismatch/is_ratio_min|mean|max, mismatch/bounded_frac (also
  # with it off whenever the trainer computes its own old log-probs: PPO, several epochs).
  c.rollout_correction = "off"
  c.rollout_correction_low = config_dict.placeholder(float)
  c.rollout_correction_high = 3.0
  # PPO only: value loss coefficient and clip range (TRL's former PPO: 0.1 and 0.2).
  c.value_coef = 0.1
  c.value_clip = 0.2
  # PPO only: GAE discount and lambda (TRL's former PPO: 1.0 and 0.95).
  c.gamma = 1.0
  c.lam = 0.95
  # One optimizer update per rollout batch: on-policy, so the ratio is exactly 1.
  c.num_epochs = 1
  c.num_minibatches = 1
  # Gradient-accumulation chunks per minibatch (memory, not maths: the result is identical).
  c.num_microbatches = 1
  c.shuffle = False
  # Run each group's prompt once in scoring and the update (its G completions attend to the
  # shared prompt keys/values): the same numbers up to float rounding, with the prompt's
  # FLOPs and activations divided by G. Minibatches and micro-batches then hold whole groups.
  c.share_prompt = True
  return c


def ppo() -> ml_collections.ConfigDict:
  """PPO: value head on the policy trunk, GAE, k1 KL in the per-token reward (beta 0.05)."""
  c = grpo()
  c.algorithm = "ppo"
  c.advantage = "gae"
  c.kl_estimator = "k1"
  c.kl_placement = "reward"
  # TRL's former PPOTrainer default (init_kl_coef 0.05).
  c.beta = 0.05
  c.whiten_advantages = True
  c.loss_aggregation = "token_mean"
  # Two passes of two minibatches: the usual PPO sample reuse, kept small for stability.
  c.num_epochs = 2
  c.num_minibatches = 2
  c.shuffle = True
  return c


def optim() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # 1e-6: the usual full-parameter RL fine-tuning rate for 1B-30B instruct models.
  c.learning_rate = 1e-6
  # 'constant' or 'cosine' (to end_lr_ratio * learning_rate), after a linear warmup.
  c.schedule = "constant"
  c.warmup_steps = 0
  c.end_lr_ratio = 0.0
  # AdamW; b2 0.99 reacts faster than 0.999 to the non-stationary RL gradients.
  c.b1 = 0.9
  c.b2 = 0.99
  c.eps = 1e-8
  # Matrices only (norm scales and biases are never decayed).
  c.weight_decay = 0.0
  # Global-norm clipping before AdamW; None: off.
  c.max_grad_norm = 1.0
  return c


def sft() -> ml_collections.ConfigDict:
  """SFT on the pivot references (the paper's SFT baseline): token-mean NLL, no KL term.

  The trainer feeds the reference completions to the same update with unit advantages: at
  ratio 1 the gradient of -ratio * A is exactly -grad log p, the SFT gradient, so SFT shares
  the sharded, rematerialised, LoRA-aware update step.
  """
  c = grpo()
  c.algorithm = "sft"
  c.kl_placement = "none"
  c.beta = 0.0
  c.loss_aggregation = "token_mean"
  return c


def get_config(algorithm: str = "grpo") -> ml_collections.ConfigDict:
  """{'rl': grpo(), ppo() or sft(), 'optim': optim()}."""
  sections = {"grpo": grpo, "ppo": ppo, "sft": sft}
  if algorithm not in sections:
    raise ValueError(f"algorithm {algorithm!r}; expected one of {sorted(sections)}")
  c = ml_collections.ConfigDict()
  c.rl = sections[algorithm]()
  c.optim = optim()
  return c
