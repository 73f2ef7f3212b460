"""The trainer's typed view of a config file, validated once before anything compiles.

Each section of the ConfigDict becomes a frozen dataclass, built by `config_schema.build`
(sections owned by a subsystem through that subsystem's `from_config`: rewards, data, pivot,
evaluation). Cross-section checks (PPO needs a value head, GRPO needs G > 1, the batch must
split over the mesh) live in `TrainerSpec.check`, so a bad combination fails with the key's
name before any jit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pbrl_jax.config_schema import ConfigError, build


@dataclasses.dataclass(frozen=True)
class ModelSection:
  """config.model: the policy (and, frozen, the reference)."""

  path: str  # 'embedded:smollm2', a Hugging Face directory, or a .gguf file
  dtype: str  # compute dtype of matmuls
  param_dtype: str  # master weights and optimizer state
  remat: bool  # recompute layer activations in the backward pass
  vocab_block: int  # vocabulary rows per block of the log-prob/entropy pass (0: whole)
  random_init: bool  # architecture (and tokenizer) from `path`, random weights (tests)
  overrides: dict  # DecoderConfig fields to override, e.g. a tiny num_layers for tests
  lora_rank: int  # LoRA rank; 0 is full fine-tuning
  lora_alpha: float  # LoRA scale = lora_alpha / lora_rank
  lora_targets: tuple[str, ...]  # projections that get adapters (pbrl_jax.models.lora)


@dataclasses.dataclass(frozen=True)
class RolloutSection:
  """config.rollout: how completions are sampled during training."""

  max_new_tokens: int
  temperature: float
  top_k: int
  top_p: float
  stop_strings: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class MeshSection:
  """config.mesh: device mesh factors; data = -1 takes the remaining devices."""

  data: int
  fsdp: int
  tensor: int


@dataclasses.dataclass(frozen=True)
class RunSection:
  """Top-level keys: the run's length, cadence and safety limits."""

  seed: int
  total_steps: int
  checkpoint_every: int
  keep_checkpoints: int
  async_checkpoint: bool
  log_every: int
  sample_every: int  # log sample completions every N steps (0: never)
  eval_every: int  # evaluate on held-out questions every N steps (0: only before/after)
  eval_before_after: bool
  max_nonfinite_in_row: int  # stop after this many skipped (non-finite) updates in a row
  debug_nonfinite_at_step: int  # test hook: poison the gradient at this update (-1: off)
  debug_nonfinite_count: int  # test hook: ... and at this many updates in a row from it


RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunSection))
SECTION_KEYS = ("model", "rollout", "mesh", "rl", "optim", "reward", "data", "pivot", "eval")


def _section(config: Any, name: str) -> Any:
  if name not in config:
    raise ConfigError(f"config.{name}: missing section")
  return config[name]


def _pipeline_options(pipeline: Any, data: Any) -> Any:
  """`PipelineOptions` of the validated data section; its checks' errors name the section."""
  try:
    return pipeline.PipelineOptions.from_config(data)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(f"config.data: {e}") from e


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
  """Every section of a training config, validated."""

  run: RunSection
  model: ModelSection
  rollout: RolloutSection
  mesh: MeshSection
  rl: Any
  optim: Any
  reward: Any
  data: Any  # pbrl_jax.data.spec.DataSection
  pivot: Any  # pbrl_jax.data.spec.PivotSection
  eval: Any
  pipeline: Any  # pbrl_jax.data.pipeline.PipelineOptions, from the data section

  @classmethod
  def from_config(cls, config: Any) -> "TrainerSpec":
    # Imported here so that `pbrl-train --help` does not import JAX-heavy modules.
    from pbrl_jax import evaluate  # pylint: disable=g-import-not-at-top
    from pbrl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=g-import-not-at-top
    from pbrl_jax.data.spec import DataSection, PivotSection
    from pbrl_jax.rewards import RewardSpec  # pylint: disable=g-import-not-at-top
    from pbrl_jax.rl import spec as rl_spec  # pylint: disable=g-import-not-at-top

    unknown = sorted(set(config.keys()) - set(RUN_KEYS) - set(SECTION_KEYS))
    if unknown:
      raise ConfigError(f"config.{unknown[0]}: unknown key (top-level keys: "
                        f"{', '.join(sorted(RUN_KEYS + SECTION_KEYS))})")
    run = build(RunSection, {k: config[k] for k in RUN_KEYS if k in config}, "config")
    data = DataSection.from_config(_section(config, "data"))
    spec = cls(
        run=run,
        model=build(ModelSection, _section(config, "model"), "config.model"),
        rollout=build(RolloutSection, _section(config, "rollout"), "config.rollout"),
        mesh=build(MeshSection, _section(config, "mesh"), "config.mesh"),
        rl=rl_spec.RLSpec.from_config(_section(config, "rl")),
        optim=rl_spec.OptimSpec.from_config(_section(config, "optim")),
        reward=RewardSpec.from_config(_section(config, "reward")),
        data=data,
        pivot=PivotSection.from_config(_section(config, "pivot")),
        eval=evaluate.EvalSpec.from_config(_section(config, "eval")),
        pipeline=_pipeline_options(pipeline, data),
    )
    spec.check()
    return spec

  @property
  def prompt_group(self) -> int:
    """Rows per shared prompt in scoring and the update (`config.rl.share_prompt`)."""
    return self.rl.prompt_group(self.pipeline.group_size)

  def check(self) -> None:
    """Cross-section checks; each error names the offending key."""
    r = self.run
    if r.total_steps < 1:
      raise ConfigError(f"config.total_steps: must be >= 1, got {r.total_steps}")
    if r.checkpoint_every < 1:
      raise ConfigError(f"config.checkpoint_every: must be >= 1, got {r.checkpoint_every}")
    if r.max_nonfinite_in_row < 1:
      raise ConfigError("config.max_nonfinite_in_row: must be >= 1")
    if r.debug_nonfinite_count < 1:
      raise ConfigError("config.debug_nonfinite_count: must be >= 1")
    if self.rollout.max_new_tokens < 1:
      raise ConfigError("config.rollout.max_new_tokens: must be >= 1")
    if self.rl.overlong_buffer > self.rollout.max_new_tokens:
      raise ConfigError(
          f"config.rl.overlong_buffer: {self.rl.overlong_buffer} exceeds the length cap"
          f" config.rollout.max_new_tokens = {self.rollout.max_new_tokens}")
    if not 0.0 < self.rollout.top_p <= 1.0:
      raise ConfigError(f"config.rollout.top_p: must be in (0, 1], got {self.rollout.top_p}")
    if self.rollout.temperature <= 0.0:
      raise ConfigError("config.rollout.temperature: RL rollouts must sample (> 0); greedy "
                        "decoding gives G identical completions and zero advantages")
    g = self.pipeline.group_size
    if self.rl.is_sft and g != 1:
      raise ConfigError(
          f"config.data.group_size: SFT trains on one reference per prompt, set 1 (got {g})")
    if g < 2 and not self.rl.is_ppo and not self.rl.is_sft:
      raise ConfigError(
          f"config.data.group_size: GRPO needs G >= 2 completions per prompt, got {g}")
    prompts = self.pipeline.global_batch_size
    rows = prompts * self.pipeline.group_size
    units = prompts if self.prompt_group > 1 else rows
    splits = self.rl.num_minibatches * self.rl.num_microbatches
    if units % splits:
      what = (f"{prompts} prompt groups (config.rl.share_prompt keeps groups whole)"
              if self.prompt_group > 1 else f"{rows} rows")
      raise ConfigError(f"config.rl.num_minibatches * num_microbatches = {splits} does not"
                        f" divide the batch: {what}")
    if self.model.lora_rank < 0:
      raise ConfigError(f"config.model.lora_rank: must be >= 0, got {self.model.lora_rank}")
    if self.model.lora_rank:
      from pbrl_jax.models import lora  # pylint: disable=g-import-not-at-top
      try:
        lora.LoraSpec(self.model.lora_rank, self.model.lora_alpha, self.model.lora_targets)
      except ValueError as e:
        raise ConfigError(f"config.model.lora_targets: {e}") from e
    for name in ("data", "fsdp", "tensor"):
      v = getattr(self.mesh, name)
      if v < 1 and not (name == "data" and v == -1):
        raise ConfigError(f"config.mesh.{name}: must be >= 1 (data may be -1), got {v}")
