"""pbrl-compare, our side: prompt and completion arrays, the JAX model and its GRPO step."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax import rl
from pbrl_jax import padding
from pbrl_jax import sampling
from pbrl_jax.models import bundle as bundle_lib
from pbrl_jax.models import sharding as shd
from pbrl_jax.models.config import DecoderConfig

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


def rollout_batch(prompt_tokens: np.ndarray, prompt_valid: np.ndarray, out: Any,
                  group_size: int) -> dict[str, np.ndarray]:
  """tokens [B,T], valid [B,T], completion_mask [B,M] from a sampler output (row i*G + j)."""
  ptok = np.repeat(prompt_tokens, group_size, axis=0)
  pval = np.repeat(prompt_valid, group_size, axis=0)
  ctok = np.asarray(out.tokens, np.int32)
  cmask = np.asarray(out.valid, np.int32)
  return {"tokens": np.concatenate([ptok, ctok], 1),
          "valid": np.concatenate([pval, cmask], 1), "completion_mask": cmask}


def decode_completions(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
  return [tokenizer.decode(t[:n].tolist(), skip_special_tokens=True)
          for t, n in zip(tokens, lengths)]


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
# pbrl_jax side: rollout, reward, reference log-probs, advantages, update.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class JaxSide:
  """Everything the JAX loop holds between steps.

  Attributes:
    bundle: the loaded model (config, params, tokenizer).
    preset: the matched preset.
    mesh: a one-device mesh.
    fns: state initialisers and shardings.
    update: the jitted update (donates the state).
    ref_logp: jitted (ref_params, tokens, valid, completion_len) -> [B,M] reference log-probs.
    ref_params: the frozen reference parameters.
    state: the train state.
  """

  bundle: Any
  preset: Preset
  mesh: Any
  fns: rl.StateFns
  update: Callable[..., Any]
  ref_logp: Callable[..., Array]
  ref_params: Any
  state: rl.TrainState


def make_ref_logp_fn(config: DecoderConfig, temperature: float, mesh: Any,
                     policy_shardings: Any) -> Callable[..., Array]:
  """Jitted reference log-probs of the completion tokens (the reference-only half of
  `make_score_fn`: with one update per batch the old log-probs come from the sampler)."""
  batch_sh = shd.batch_sharding(mesh, 1)

  def ref_logp(ref_params: Any, tokens: Array, valid: Array, completion_mask: Array) -> Array:
    with shd.axis_rules():
      logp, _, _ = rl.completion_outputs({"policy": ref_params}, config, tokens, valid,
                                         completion_mask.shape[1], temperature)
    return logp * completion_mask.astype(jnp.float32)

  return jax.jit(ref_logp, in_shardings=(policy_shardings, batch_sh, batch_sh, batch_sh),
                 out_shardings=batch_sh)


def one_device_mesh() -> Any:
  return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def build_jax_side(model_dir: str, preset: Preset, num_microbatches: int = 1) -> JaxSide:
  """Loads the checkpoint; the reference is the loaded params (never donated), the policy
  starts from a copy of them inside the train state.

  `num_microbatches` splits our update's forward/backward into accumulated chunks: the same
  gradient (tests/rl/test_rl_steps.py), a quarter of the activation memory at 4. SmolLM2 with
  32 rows of ~170 tokens peaks at 18.4 GB RSS in one chunk (which, beside TRL's process
  memory, exhausted a 24 GB host) and at 7.6 GB in four, and runs faster (52 s vs 72 s).
  """
  bundle = bundle_lib.from_pretrained(model_dir, dtype="float32")
  mesh = one_device_mesh()
  optimizer = preset.optimizer()
  fns = rl.make_state_fns(bundle.config, optimizer, mesh, with_value_head=False)
  ref_params = jax.device_put(bundle.params, fns.policy_shardings)
  state = fns.from_params(ref_params, jax.random.PRNGKey(preset.seed))
  hp = dataclasses.replace(preset.update_hparams(), num_microbatches=num_microbatches)
  update = rl.make_update_fn(bundle.config, hp, optimizer, mesh, fns.shardings)
  ref_logp = make_ref_logp_fn(bundle.config, preset.temperature, mesh, fns.policy_shardings)
  return JaxSide(bundle=bundle, preset=preset, mesh=mesh, fns=fns, update=update,
                 ref_logp=ref_logp, ref_params=ref_params, state=state)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0


def jax_train_step(side: JaxSide, prompts: Sequence[Prompt], reward_func: RewardFunc,
                   step: int) -> dict[str, float]:
  """One GRPO step: rollout -> reward -> reference log-probs -> advantages -> update.

  Returns:
    Metrics (reward_mean, kl, loss, grad_norm, entropy, completion_tokens, ...) and phase
    seconds (time_generation, time_reward, time_reference_forward, time_update, time_step).
  """
  p = side.preset
  config, tokenizer = side.bundle.config, side.bundle.tokenizer
  g = p.num_generations
  t_start = time.perf_counter()
  ptok, pval = prompt_arrays(tokenizer, prompts, config.pad_token_id)
  rng = jax.random.fold_in(jax.random.PRNGKey(p.seed), step)
  out, t_gen = _timed(lambda: sampling.sample(
      side.state.params["policy"], config, ptok, pval, rng, num_samples=g,
      max_new_tokens=p.max_completion_length, temperature=p.temperature,
      eos_ids=sampling.eos_ids(config, tokenizer)))

  t0 = time.perf_counter()
  tokens, lengths, old_logp = jax.device_get((out.tokens, out.lengths, out.sample_logprobs))
  texts = decode_completions(tokenizer, tokens, lengths)
  rewards = np.asarray(reward_func(prompts=[pr.question for pr in prompts for _ in range(g)],
                                   completions=texts, **reward_columns(prompts, g)), np.float32)
  batch = rollout_batch(ptok, pval, out, g)
  t_reward = time.perf_counter() - t0

  if p.beta:
    ref_logp, t_ref = _timed(lambda: side.ref_logp(side.ref_params, batch["tokens"],
                                                   batch["valid"], batch["completion_mask"]))
  else:
    ref_logp, t_ref = np.zeros(batch["completion_mask"].shape, np.float32), 0.0
  batch.update(old_logp=np.asarray(old_logp, np.float32), ref_logp=ref_logp,
               advantages=np.asarray(rl.grpo_advantages(jnp.asarray(rewards), g)))

  def do_update():
    side.state, metrics = side.update(side.state, batch)
    return metrics

  metrics, t_update = _timed(do_update)
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  spread = rl.group_spread_metrics(jnp.asarray(rewards), g)
  n_tok = int(np.sum(lengths))
  t_step = time.perf_counter() - t_start
  return {
      "step": step + 1, "reward_mean": float(np.mean(rewards)),
      "reward_std": float(np.std(rewards, ddof=1)) if rewards.size > 1 else 0.0,
      "frac_reward_zero_std": float(spread["reward_zero_std_group_frac"]),
      "kl": metrics["kl"], "loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
      "entropy": metrics["entropy"], "clip_frac_low": metrics["clip_frac_low"],
      "clip_frac_high": metrics["clip_frac_high"], "completion_tokens": n_tok,
      "completion_mean_length": n_tok / len(lengths),
      "time_generation": t_gen, "time_reward": t_reward, "time_reference_forward": t_ref,
      "time_update": t_update, "time_step": t_step,
  }
