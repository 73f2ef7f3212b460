"""pbrl-compare, our side: prompt and completion arrays, the JAX model and its GRPO step."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax import padding
from pbrl_jax import rl
from pbrl_jax import sampling
from pbrl_jax import stages
from pbrl_jax.models import bundle as bundle_lib
from pbrl_jax.models import sharding as shd

from pbrl_jax.compare.prompts import Prompt
from pbrl_jax.compare.preset import Preset
from pbrl_jax.compare.common import Array, RewardFunc


# ---------------------------------------------------------------------------------------------
# Tokens: prompts in, left-padded prompt rows and right-padded completion rows out.
# ---------------------------------------------------------------------------------------------


def uses_chat(tokenizer: Any) -> bool:
  """Chat-formatted prompts when the tokenizer has a template (TRL's conversational format)."""
  return bool(getattr(tokenizer, "chat_template", None))


def prompt_arrays(tokenizer: Any, prompts: Sequence[Prompt], pad_id: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded [R,P] prompt tokens and validity, P a sampler prompt bucket."""
  ids = sampling.encode_prompts(tokenizer, [p.question for p in prompts],
                                chat=uses_chat(tokenizer))
  length = padding.bucket_length(max(len(x) for x in ids), sampling.PROMPT_BUCKETS)
  tokens, valid = padding.left_pad(ids, length, pad_id)
  return np.asarray(tokens, np.int32), np.asarray(valid, np.int32)


def reward_columns(prompts: Sequence[Prompt], group_size: int) -> dict[str, list[Any]]:
  """Dataset columns repeated per completion, as TRL hands them to reward functions."""
  rep = lambda xs: [x for x in xs for _ in range(group_size)]
  return {"answer": rep([p.answer for p in prompts]), "lang": rep([p.lang for p in prompts]),
          "reference": rep([p.reference for p in prompts]),
          "question": rep([p.question for p in prompts])}


def trl_prompt(tokenizer: Any, prompt: Prompt) -> Any:
  return ([{"role": "user", "content": prompt.question}] if uses_chat(tokenizer)
          else prompt.question)


# ---------------------------------------------------------------------------------------------
# pbrl_jax side: the trainer's own stages (rollout, score, advantages, update) on its spec.
# ---------------------------------------------------------------------------------------------


def prompt_batch(tokenizer: Any, prompts: Sequence[Prompt], group_size: int, pad_id: int
                 ) -> stages.PromptBatch:
  """The compared prompts as the trainer's prompt batch (no cached pivot embeddings: the
  reward is the compared callable)."""
  tokens, valid = prompt_arrays(tokenizer, prompts, pad_id)
  return stages.PromptBatch(
      prompt_tokens=tokens, prompt_valid=valid.astype(bool), group_size=group_size,
      ids=tuple(f"compare-{i}" for i in range(len(prompts))),
      langs=tuple(p.lang for p in prompts), questions=tuple(p.question for p in prompts),
      gold=tuple(p.answer for p in prompts), reference=tuple(p.reference for p in prompts),
      reference_answer=tuple(p.answer for p in prompts), ref_emb={})


def call_reward(reward_func: RewardFunc, prompts: Sequence[Prompt], texts: Sequence[str],
                group_size: int) -> list[float]:
  """The reward callable with TRL's arguments (completion i*G + j answers prompt i)."""
  return list(reward_func(prompts=[p.question for p in prompts for _ in range(group_size)],
                          completions=list(texts), **reward_columns(prompts, group_size)))


@dataclasses.dataclass
class JaxSide:
  """Everything the JAX loop holds between steps.

  Attributes:
    bundle: the loaded model (config, params, tokenizer).
    preset: the matched preset.
    fns: the trainer's step functions, built from `preset.trainer_spec` (shared prompt on).
    state_fns: the state initialisers and shardings.
    policy_score: the trainer's scoring jit with policy outputs: (params, ref_params, batch)
      -> {logp, entropy, ref_logp} [B, M] (parity probes score a given policy with it).
    state: the train state.
  """

  bundle: Any
  preset: Preset
  fns: stages.StepFns
  state_fns: rl.StateFns
  policy_score: Callable[..., dict[str, Array]]
  state: rl.TrainState

  @property
  def ref_params(self) -> Any:
    return self.fns.ref_params

  @property
  def update_hparams(self) -> rl.UpdateHParams:
    """The loss settings the trainer's update compiles (prompt_group G: shared prompt)."""
    spec = self.fns.spec
    return spec.rl.update_hparams(spec.rollout.temperature, spec.rollout.max_new_tokens,
                                  spec.prompt_group)


def one_device_mesh() -> Any:
  return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def build_jax_side(model_dir: str, preset: Preset, num_prompts: int,
                   num_microbatches: int = 1) -> JaxSide:
  """Loads the checkpoint and builds the trainer's step functions for the preset, as
  `train.build` does: the reference is the loaded params (never donated), the policy starts
  from a copy of them inside the train state.

  `num_microbatches` splits our update's forward/backward into accumulated chunks (whole
  prompt groups): the same gradient (tests/rl/test_rl_steps.py), a quarter of the activation
  memory at 4. SmolLM2 with 32 rows of ~170 tokens peaks at 18.4 GB RSS in one chunk (which,
  beside TRL's process memory, exhausted a 24 GB host) and at 7.6 GB in four.
  """
  bundle = bundle_lib.from_pretrained(model_dir, dtype="float32")
  spec = preset.trainer_spec(model_dir, num_prompts, num_microbatches)
  mesh = one_device_mesh()
  optimizer = preset.optimizer()
  state_fns = rl.make_state_fns(bundle.config, optimizer, mesh, with_value_head=False)
  ref_params = jax.device_put(bundle.params, state_fns.policy_shardings)
  base_key = jax.random.PRNGKey(preset.seed)
  fns = stages.build_step_fns(spec, mesh, bundle.config, bundle.tokenizer, None, ref_params,
                              state_fns, optimizer, None, base_key)
  policy_score = rl.make_score_fn(bundle.config, mesh,
                                  params_shardings=state_fns.shardings.params,
                                  temperature=preset.temperature, policy_outputs=True,
                                  prompt_group=spec.prompt_group)
  state = state_fns.from_params(ref_params, jax.random.fold_in(base_key, 1))
  return JaxSide(bundle=bundle, preset=preset, fns=fns, state_fns=state_fns,
                 policy_score=policy_score, state=state)


def jax_train_step(side: JaxSide, prompts: Sequence[Prompt], reward_func: RewardFunc,
                   step: int) -> dict[str, float]:
  """One GRPO step through the trainer's stages: rollout -> score (reference log-probs)
  -> reward (the compared callable) -> advantages -> update.

  Returns:
    Metrics (reward_mean, kl, loss, grad_norm, entropy, completion_tokens, ...) and phase
    seconds (time_generation, time_reward, time_reference_forward, time_update, time_step).
    Every stage returns host values or blocks, so the phase times are complete.
  """
  fns, g = side.fns, side.preset.num_generations
  clock = time.perf_counter
  t_start = clock()
  pb = prompt_batch(fns.tokenizer, prompts, g, fns.model_cfg.pad_token_id)
  rollout = stages.rollout_stage(fns, side.state, pb, step)
  t_gen = clock() - t_start

  t0 = clock()
  rewards = stages.external_rewards(fns, rollout,
                                    call_reward(reward_func, prompts, rollout.texts, g))
  t_reward = clock() - t0

  t0 = clock()
  scored = stages.score_stage(fns, side.state, pb, rollout)  # ref_logp when beta > 0
  t_ref = clock() - t0

  t0 = clock()
  batch = stages.advantage_stage(fns, rollout, scored, rewards)
  side.state, metrics = stages.update_stage(fns, side.state, batch)
  t_update = clock() - t0

  r = rewards.rewards
  spread = rl.group_spread_metrics(jnp.asarray(r), g)
  n_tok = int(np.sum(rollout.lengths))
  return {
      "step": step + 1, "reward_mean": float(np.mean(r)),
      "reward_std": float(np.std(r, ddof=1)) if r.size > 1 else 0.0,
      "frac_reward_zero_std": float(spread["reward_zero_std_group_frac"]),
      "kl": metrics.get("kl", math.nan), "loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
      "entropy": metrics["entropy"], "clip_frac_low": metrics["clip_frac_low"],
      "clip_frac_high": metrics["clip_frac_high"], "completion_tokens": n_tok,
      "completion_mean_length": n_tok / len(rollout.lengths),
      "time_generation": t_gen, "time_reward": t_reward, "time_reference_forward": t_ref,
      "time_update": t_update, "time_step": clock() - t_start,
  }
