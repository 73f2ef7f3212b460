"""pbrl-compare, the matched preset: what each side is configured with, in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

from pbrl_jax import rl
from pbrl_jax.rl.spec import RLSpec




# The trainer's default `model.vocab_block` (configs/common.py; a test keeps them equal): our
# side scores log-probs the way `pbrl-train` does, blockwise once V exceeds it.
TRAINER_VOCAB_BLOCK = 32768

# ---------------------------------------------------------------------------------------------
# The matched preset: one place that says what each side is configured with.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
  """GRPO hyperparameters shared by both sides (TRL names; our equivalents in `rows`).

  Attributes:
    beta: KL coefficient in the loss (k3 estimator on both sides).
    loss_type: TRL loss_type: 'grpo' (sequence-mean of token-means), 'dr_grpo' (sum over
      B * max_completion_length), 'dapo' or 'bnpo' (token mean), 'cispo' (clipped detached
      weight times log-prob), 'sapo' (soft gate), 'luspo' (sequence weights, length-scaled),
      'vespo' (detached Gamma weight of the sequence ratio times log-prob); ours:
      `rl.TRL_LOSS_TYPES`.
    importance_sampling_level: 'token' or 'sequence' (GSPO).
    sapo_temperature_pos, sapo_temperature_neg: SAPO's gate temperatures.
    vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: VESPO's Gamma weight.
    top_entropy_quantile: rho: only the top rho of the tokens by entropy carry the policy
      term (1: all).
    mask_truncated_completions: completions cut by the length cap leave the loss (DAPO's
      overlong filtering).
    vllm_importance_sampling_mode: the sampler-mismatch correction ('token_truncate',
      'token_mask', 'sequence_truncate', 'sequence_mask'; TRL sets
      `vllm_importance_sampling_correction` with it), or None for none (ours:
      `rl.rollout_correction`). Both sides sample with their own float32 model, so the step
      parity feeds both losses the same seeded sampler log-probs (`parity.step_parity`).
    vllm_importance_sampling_clip_min, vllm_importance_sampling_clip_max: its bounds (None:
      none; TRL's defaults None and 3.0).
    num_generations: G completions per prompt.
    temperature: sampling temperature; logits are divided by it in the loss as well.
    learning_rate: constant AdamW learning rate (no warmup, no decay).
    max_completion_length: completion token limit (and the Dr.GRPO constant).
    epsilon: lower clip range.
    epsilon_high: upper clip range.
    use_bias_correction_kl: multiply the per-token KL by the ratio (TRL's default).
    max_grad_norm: global-norm clipping before the optimizer.
    adam_b1, adam_b2, adam_eps, weight_decay: AdamW (TRL / transformers defaults).
    seed: seed of both sides (TRL's `seed`; our sampler and init keys).
  """

  beta: float = 0.04
  loss_type: str = "grpo"
  num_generations: int = 4
  temperature: float = 1.0
  learning_rate: float = 1e-6
  max_completion_length: int = 64
  epsilon: float = 0.2
  epsilon_high: float = 0.2
  use_bias_correction_kl: bool = True
  importance_sampling_level: str = "token"
  sapo_temperature_pos: float = 1.0
  sapo_temperature_neg: float = 1.05
  vespo_k_pos: float = 2.0
  vespo_lambda_pos: float = 3.0
  vespo_k_neg: float = 3.0
  vespo_lambda_neg: float = 2.0
  top_entropy_quantile: float = 1.0
  mask_truncated_completions: bool = False
  vllm_importance_sampling_mode: str | None = None
  vllm_importance_sampling_clip_min: float | None = None
  vllm_importance_sampling_clip_max: float | None = 3.0
  max_grad_norm: float = 1.0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  weight_decay: float = 0.0
  seed: int = 0

  def __post_init__(self):
    if self.loss_type not in rl.TRL_LOSS_TYPES:
      raise ValueError(f"loss_type {self.loss_type!r}; expected one of"
                       f" {sorted(rl.TRL_LOSS_TYPES)}")
    rl.ImportanceLevel.parse(self.importance_sampling_level)  # raises on an unknown name
    needs = rl.TRL_LOSS_TYPES[self.loss_type][2]
    if needs and self.importance_sampling_level != needs:
      raise ValueError(f"loss_type {self.loss_type!r} needs importance_sampling_level"
                       f" {needs!r} (TRL warns and runs it anyway; we do not compare that)")
    if self.num_generations < 2:
      raise ValueError("GRPO needs num_generations >= 2")
    if self.temperature <= 0:
      raise ValueError("sampling temperature must be > 0")
    if not 0.0 < self.top_entropy_quantile <= 1.0:
      raise ValueError(f"top_entropy_quantile must lie in (0, 1], got "
                       f"{self.top_entropy_quantile}")
    if self.vllm_importance_sampling_mode is not None:
      mode = rl.RolloutCorrection.parse(self.vllm_importance_sampling_mode)  # raises if unknown
      if mode is rl.RolloutCorrection.OFF:
        raise ValueError("vllm_importance_sampling_mode: None turns the correction off")

  def rl_section(self, num_microbatches: int = 1) -> dict[str, Any]:
    """Our `rl` config section for this preset, validated by `RLSpec.from_config` like a
    config file's: TRL's GRPO (std-scaled group advantages without a floor, k3 KL in the
    loss, one update per batch) with the trainer's defaults where TRL has no equivalent
    (each group's prompt run once: `share_prompt`)."""
    return dict(algorithm="grpo", advantage="grpo", std_floor=0.0, whiten_advantages=False,
                overlong_buffer=0, overlong_penalty=0.0,
                mask_truncated=self.mask_truncated_completions, dynamic_sampling_batches=0,
                kl_estimator="k3", kl_placement="loss", beta=self.beta, kl_clamp=None,
                kl_ratio_correction=self.use_bias_correction_kl,
                policy_loss=rl.TRL_LOSS_TYPES[self.loss_type][0],
                importance_level=self.importance_sampling_level, eps_low=self.epsilon,
                eps_high=self.epsilon_high, sapo_tau_pos=self.sapo_temperature_pos,
                sapo_tau_neg=self.sapo_temperature_neg, vespo_k_pos=self.vespo_k_pos,
                vespo_lambda_pos=self.vespo_lambda_pos, vespo_k_neg=self.vespo_k_neg,
                vespo_lambda_neg=self.vespo_lambda_neg, dual_clip=None,
                loss_aggregation=rl.TRL_LOSS_TYPES[self.loss_type][1],
                entropy_coef=0.0, top_entropy_quantile=self.top_entropy_quantile,
                rollout_correction=self.vllm_importance_sampling_mode or "off",
                rollout_correction_low=self.vllm_importance_sampling_clip_min,
                rollout_correction_high=self.vllm_importance_sampling_clip_max,
                value_coef=0.0, value_clip=None, gamma=1.0, lam=1.0,
                num_epochs=1, num_minibatches=1, num_microbatches=num_microbatches,
                shuffle=False, share_prompt=True)

  def trainer_spec(self, model_dir: str, num_prompts: int, num_microbatches: int = 1) -> Any:
    """The trainer's spec of this preset: what `stages.build_step_fns` compiles for our side.

    Only the sections the step functions read are set; the reward comes from the compared
    reward callable (`stages.external_rewards`), so `reward`, `data`, `pivot`, `eval` and
    `optim` (the optimizer is `self.optimizer()`) are None.
    """
    # pylint: disable=g-import-not-at-top
    from pbrl_jax import train_spec as ts
    from pbrl_jax.data.pipeline import PipelineOptions
    spec = ts.TrainerSpec(
        run=ts.RunSection(seed=self.seed, total_steps=1, checkpoint_every=1,
                          keep_checkpoints=1, async_checkpoint=False, log_every=1,
                          sample_every=0, eval_every=0, eval_before_after=False,
                          max_nonfinite_in_row=1, debug_nonfinite_at_step=-1,
                          debug_nonfinite_count=1),
        model=ts.ModelSection(path=model_dir, dtype="float32", param_dtype="float32",
                              remat=False, vocab_block=TRAINER_VOCAB_BLOCK, random_init=False,
                              overrides={}, lora_rank=0, lora_alpha=1.0, lora_targets=()),
        rollout=ts.RolloutSection(max_new_tokens=self.max_completion_length,
                                  temperature=self.temperature, top_k=0, top_p=1.0,
                                  stop_strings=()),
        mesh=ts.MeshSection(data=1, fsdp=1, tensor=1),
        rl=RLSpec.from_config(self.rl_section(num_microbatches)),
        optim=None, reward=None, data=None, pivot=None, eval=None,
        pipeline=PipelineOptions(global_batch_size=num_prompts,
                                 group_size=self.num_generations, seed=self.seed))
    spec.check()
    return spec

  def update_hparams(self, prompt_group: int = 1) -> rl.UpdateHParams:
    """Our update step's settings for this preset (the trainer's `RLSpec.update_hparams`)."""
    return RLSpec.from_config(self.rl_section()).update_hparams(
        self.temperature, self.max_completion_length, prompt_group)

  def optimizer(self) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW at a constant learning rate (TRL: lr_scheduler 'constant')."""
    schedule = rl.make_schedule(rl.Schedule.CONSTANT, self.learning_rate, 0, 1)
    return rl.make_optimizer(schedule, b1=self.adam_b1, b2=self.adam_b2, eps=self.adam_eps,
                             weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm)

  def trl_kwargs(self) -> dict[str, Any]:
    """The GRPOConfig arguments this preset sets."""
    return dict(beta=self.beta, loss_type=self.loss_type, num_generations=self.num_generations,
                temperature=self.temperature, top_p=1.0, top_k=0,
                learning_rate=self.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
                max_completion_length=self.max_completion_length, epsilon=self.epsilon,
                epsilon_high=self.epsilon_high,
                use_bias_correction_kl=self.use_bias_correction_kl,
                importance_sampling_level=self.importance_sampling_level,
                sapo_temperature_pos=self.sapo_temperature_pos,
                sapo_temperature_neg=self.sapo_temperature_neg,
                vespo_k_pos=self.vespo_k_pos, vespo_lambda_pos=self.vespo_lambda_pos,
                vespo_k_neg=self.vespo_k_neg, vespo_lambda_neg=self.vespo_lambda_neg,
                top_entropy_quantile=self.top_entropy_quantile,
                mask_truncated_completions=self.mask_truncated_completions,
                # TRL applies it only with vLLM generation (the step parity switches it on).
                vllm_importance_sampling_correction=self.vllm_importance_sampling_mode
                is not None,
                vllm_importance_sampling_mode=self.vllm_importance_sampling_mode
                or "sequence_mask",
                vllm_importance_sampling_clip_min=self.vllm_importance_sampling_clip_min,
                vllm_importance_sampling_clip_max=self.vllm_importance_sampling_clip_max,
                max_grad_norm=self.max_grad_norm, adam_beta1=self.adam_b1,
                adam_beta2=self.adam_b2, adam_epsilon=self.adam_eps,
                weight_decay=self.weight_decay, scale_rewards="group", num_iterations=1,
                seed=self.seed, data_seed=self.seed)

  def rows(self) -> list[tuple[str, str, str]]:
    """(setting, TRL GRPOConfig, pbrl_jax) for the printed preset table."""
    policy_loss, agg, _ = rl.TRL_LOSS_TYPES[self.loss_type]
    return [
        ("KL coefficient", f"beta={self.beta}", f"kl_coef_in_loss={self.beta}"),
        ("KL estimator", "k3 in the loss (fixed)", "kl_estimator=k3"),
        ("KL ratio correction", f"use_bias_correction_kl={self.use_bias_correction_kl}",
         f"kl_ratio_correction={self.use_bias_correction_kl}"),
        ("policy loss and aggregation", f"loss_type={self.loss_type}",
         f"policy_loss={policy_loss}, loss_aggregation={agg}"),
        ("importance weights", f"importance_sampling_level={self.importance_sampling_level}",
         f"importance_level={self.importance_sampling_level}"),
        ("top-entropy tokens", f"top_entropy_quantile={self.top_entropy_quantile}",
         f"top_entropy_quantile={self.top_entropy_quantile}"),
        ("truncated completions",
         f"mask_truncated_completions={self.mask_truncated_completions}",
         f"mask_truncated={self.mask_truncated_completions}"),
        ("sampler mismatch correction",
         f"vllm_importance_sampling_mode={self.vllm_importance_sampling_mode}, clip"
         f" [{self.vllm_importance_sampling_clip_min}, {self.vllm_importance_sampling_clip_max}]",
         f"rollout_correction={self.vllm_importance_sampling_mode or 'off'}"),
        ("completions per prompt", f"num_generations={self.num_generations}",
         f"num_samples={self.num_generations}"),
        ("advantages", "scale_rewards=group (std ddof=1, +1e-4)",
         "grpo_advantages (ddof=1, eps=1e-4)"),
        ("sampling", f"temperature={self.temperature}, top_p=1, top_k=0",
         f"temperature={self.temperature}, top_p=1, top_k=0"),
        ("max completion tokens", f"max_completion_length={self.max_completion_length}",
         f"max_new_tokens={self.max_completion_length}"),
        ("clip range", f"epsilon={self.epsilon}, epsilon_high={self.epsilon_high}",
         f"eps_low={self.epsilon}, eps_high={self.epsilon_high}"),
        ("optimizer", f"AdamW lr={self.learning_rate} constant, betas=({self.adam_b1}, "
         f"{self.adam_b2}), eps={self.adam_eps}, wd={self.weight_decay}",
         f"make_optimizer(constant {self.learning_rate}), same betas/eps/wd"),
        ("grad clipping", f"max_grad_norm={self.max_grad_norm}",
         f"clip_by_global_norm({self.max_grad_norm})"),
        ("updates per batch", "num_iterations=1, one optimizer step",
         "num_epochs=1, num_minibatches=1"),
        ("seed", f"seed={self.seed}", f"PRNGKey({self.seed})"),
    ]


def preset_table(preset: Preset) -> str:
  """The preset as a markdown table."""
  lines = ["| setting | TRL 1.16 GRPOConfig | pbrl_jax |", "|---|---|---|"]
  lines += [f"| {a} | `{b}` | `{c}` |" for a, b, c in preset.rows()]
  return "\n".join(lines)
