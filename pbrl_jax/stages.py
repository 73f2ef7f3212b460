"""One training step as typed stages: rollout -> score -> reward -> advantages -> update -> record.

  prompts  = PromptBatch.from_loader(next(data_iter))             host
  rollout  = rollout_stage(fns, state, prompts, step)             jit sampler -> host rows
  scored   = score_stage(fns, state, prompts, rollout)            host -> mesh, one scoring jit,
                                                                  host text scores meanwhile
  rewards  = reward_stage(fns, rollout, scored)                   host: each host its own rows,
                                                                  then gathered (all rows)
  (optional) pbrl_jax.dynamic_sampling: groups of equal rewards replaced by further
             prompts' informative groups, the assembled batch scored and rewarded again
  batch    = advantage_stage(fns, rollout, scored, rewards)       host -> mesh, jit advantages
  state, m = update_stage(fns, state, batch)                      jit update, metrics -> host
  record   = step_record(fns, rollout, scored, rewards, m)        host

Every stage is a function of `StepFns` (what a run builds once: models, mesh, jitted programs)
and of the frozen outputs of the stages before it, so each can be called and tested on its
own, and `pbrl_jax.train` is the loop around them. Host/device moves happen in the stage that
names them above: rollouts and rewards live on the host (every host holds all rows), scoring,
advantages and the update run on the mesh. The host text work of scoring and rewarding (final
answers, guards, translations, long-text embeddings) is split: each host computes the rows its
devices hold, and only the finished reward records cross hosts.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np

from pbrl_jax import distributed
from pbrl_jax import host_scoring
from pbrl_jax import metrics as metrics_lib
from pbrl_jax import padding
from pbrl_jax import sampling
from pbrl_jax.models import decoder
from pbrl_jax.models import lora as lora_lib
from pbrl_jax.models import sharding as shd
from pbrl_jax.rewards import score as score_lib
from pbrl_jax.rl import advantages as adv_lib
from pbrl_jax.rl import losses
from pbrl_jax.rl import shaping
from pbrl_jax.rl import steps as steps_lib
from pbrl_jax.train_spec import TrainerSpec

Array = jax.Array

# ---------------------------------------------------------------------------------------------
# What passes between stages.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """One step's prompts on the host (`pbrl_jax.data.pipeline` batch), B prompts."""

  prompt_tokens: np.ndarray  # [B, P] int32, left-padded
  prompt_valid: np.ndarray  # [B, P] bool
  group_size: int  # G completions per prompt
  ids: tuple[str, ...]
  langs: tuple[str, ...]
  questions: tuple[str, ...]
  gold: tuple[str, ...]
  reference: tuple[str, ...]
  reference_answer: tuple[str, ...]
  ref_emb: dict[str, np.ndarray]  # '{encoder}/{field}' -> [B, E], cached by the pivot step

  @classmethod
  def from_loader(cls, batch: dict[str, Any]) -> "PromptBatch":
    return cls(prompt_tokens=np.asarray(batch["prompt_tokens"], np.int32),
               prompt_valid=np.asarray(batch["prompt_valid"], bool),
               group_size=int(batch["group_size"]),
               ids=tuple(batch["ids"]), langs=tuple(batch["langs"]),
               questions=tuple(batch["questions"]), gold=tuple(batch["gold"]),
               reference=tuple(batch["reference"]),
               reference_answer=tuple(batch["reference_answer"]),
               ref_emb=dict(batch["ref_emb"]))

  def row_langs(self) -> tuple[str, ...]:
    """The language of every completion row (row i*G + j belongs to prompt i)."""
    return tuple(lang for lang in self.langs for _ in range(self.group_size))


@dataclasses.dataclass(frozen=True)
class Rollout:
  """One step's prompts and completions on the host, row i*G + j = sample j of prompt i."""

  tokens: np.ndarray  # [BG, P+M] prompt (left-padded) then completion (right-padded)
  valid: np.ndarray  # [BG, P+M]
  completion_mask: np.ndarray  # [BG, M]
  sampler_logp: np.ndarray  # [BG, M] log-probs of the sampling distribution
  texts: tuple[str, ...]
  finished: np.ndarray  # [BG] stopped by EOS (not by the length cap)
  lengths: np.ndarray  # [BG]
  langs: tuple[str, ...]  # [BG] the question's language of each row


@dataclasses.dataclass(frozen=True)
class Scored:
  """The scoring jit's outputs (on the mesh) and the host text scores computed meanwhile."""

  device_batch: dict[str, Array]  # tokens, valid, completion_mask on the mesh
  outputs: dict[str, Array]  # [ref_logp, logp, entropy, values, embeddings]
  rows: np.ndarray  # [R] the rows this host scored (all BG on one host), sorted
  items: tuple[dict[str, Any], ...]  # reward inputs of those rows (empty for SFT)
  text_rows: tuple[dict[str, Any], ...]  # their host text scores (empty for SFT)
  policy_embeddings: np.ndarray | None  # [R, S, E] every segment, long ones host-embedded


@dataclasses.dataclass(frozen=True)
class Rewards:
  """Sequence rewards on the host, with every component the reward reported."""

  rows: tuple[dict[str, Any], ...]  # the reward's own record per row (empty for SFT)
  rewards: np.ndarray  # [BG] the reward
  overlong: np.ndarray  # [BG] the shaping term (0 when off)

  @property
  def shaped(self) -> np.ndarray:
    """What the advantages see: the reward plus the shaping terms."""
    return self.rewards + self.overlong


@dataclasses.dataclass(frozen=True)
class UpdateBatch:
  """The update's inputs on the mesh."""

  arrays: dict[str, Array]  # tokens, valid, completion_mask, old_logp, advantages
  # [, ref_logp, returns, old_values, rollout_weight]
  metrics: dict[str, Array] = dataclasses.field(default_factory=dict)  # sampler/trainer
  # mismatch statistics, reported with the update's metrics


# ---------------------------------------------------------------------------------------------
# What a run builds once.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepFns:
  """Models, mesh and jitted programs of a run: everything the stages need but the state."""

  spec: TrainerSpec
  mesh: Any
  model_cfg: decoder.DecoderConfig
  tokenizer: Any
  reward_models: Any  # score.RewardModels; None when the rewards come from outside
  # (`external_rewards`: pbrl-compare's TRL-style reward functions)
  ref_params: Any  # the reference policy on the mesh (with LoRA, also the frozen base);
  # None when nothing reads it (full fine-tuning without a KL term, `train.build`)
  lora: lora_lib.LoraSpec | None
  encoder_params: Any  # the reward encoder's params on the mesh, or None (host encoder)
  score_fn: Callable[..., dict[str, Array]]
  update_fn: Callable[..., Any]
  advantage_fn: Callable[..., tuple[Array, Array | None]]
  stop_ids: tuple[tuple[int, ...], ...]
  eos_ids: tuple[int, ...]  # `sampling.eos_ids`: the tokens that end a completion
  base_key: Array

  @property
  def batch_sharding(self) -> Any:
    return shd.batch_sharding(self.mesh, 1)

  @property
  def encoder(self) -> Any:
    return None if self.reward_models is None else self.reward_models.encoder

  @property
  def encoder_in_jit(self) -> bool:
    return self.encoder_params is not None

  def policy(self, state: Any) -> tuple[Any, Any, float]:
    """(decoder params, adapters or None, LoRA scale) the policy samples with.

    With LoRA the base is the reference's params and the adapters ride along unmerged.
    """
    if self.lora is None:
      return state.params["policy"], None, 1.0
    return self.ref_params, state.params["lora"], self.lora.alpha / self.lora.rank

  def update_extra(self) -> tuple[Any, ...]:
    return (self.ref_params,) if self.lora is not None else ()  # the frozen base, with LoRA


def is_on_policy(spec: TrainerSpec) -> bool:
  """Whether the sampler's log-probs can stand in for a scoring forward of the policy.

  On-policy GRPO (one optimizer update per batch) with untruncated sampling: same model code,
  so they agree up to rounding, and scoring skips a forward.
  """
  return (not spec.rl.is_ppo and not spec.rl.is_sft and spec.rl.num_epochs == 1
          and spec.rl.num_minibatches == 1 and spec.rollout.top_k == 0
          and spec.rollout.top_p == 1.0
          and spec.rl.rollout_correction is losses.RolloutCorrection.OFF)


def scores_policy(spec: TrainerSpec) -> bool:
  """Whether scoring runs a forward of the policy for the update's old log-probs: not
  on-policy (the sampler's stand in), and not SFT (the update's own stand in:
  `UpdateHParams.ratio_to_self`, so the references' NLL comes from the update)."""
  return not is_on_policy(spec) and not spec.rl.is_sft


def _segment_embedder(encoder: Any) -> Callable[[Any, Any], Array]:
  """(params, encoder inputs with leaves [BG, S, ...]) -> embeddings [BG, S, E], jittable."""

  def embed(params, enc_batch):
    rows, segs = jax.tree.leaves(enc_batch)[0].shape[:2]
    flat = jax.tree.map(lambda x: x.reshape((rows * segs,) + x.shape[2:]), enc_batch)
    return encoder.embed(params, flat).reshape(rows, segs, -1)

  return embed


def make_state_fns(spec: TrainerSpec, model_cfg: decoder.DecoderConfig, mesh: Any
                   ) -> tuple[Any, lora_lib.LoraSpec | None, Any]:
  """(optimizer, LoRA spec or None, `steps.StateFns`): the train state's structure,
  shardings and initialisers. With LoRA the state holds the adapters only."""
  optimizer = spec.optim.make(spec.run.total_steps * spec.rl.num_epochs
                              * spec.rl.num_minibatches)
  lora = (lora_lib.LoraSpec(spec.model.lora_rank, spec.model.lora_alpha,
                            spec.model.lora_targets) if spec.model.lora_rank else None)
  state_fns = steps_lib.make_state_fns(model_cfg, optimizer, mesh, spec.rl.is_ppo, lora=lora)
  return optimizer, lora, state_fns


def make_device_steps(spec: TrainerSpec, mesh: Any, model_cfg: decoder.DecoderConfig,
                      state_fns: Any, optimizer: Any, lora: lora_lib.LoraSpec | None,
                      embed_fn: Callable[[Any, Any], Array] | None = None
                      ) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """The jitted scoring and update programs of `spec`: what a run executes, and what
  `pbrl-plan --check-xla` compiles from abstract parameters (`plan_xla.trainer_steps`)."""
  score_fn = steps_lib.make_score_fn(model_cfg, mesh,
                                     params_shardings=state_fns.shardings.params,
                                     temperature=spec.rollout.temperature,
                                     embed_fn=embed_fn, policy_outputs=scores_policy(spec),
                                     lora=lora, ref_shardings=state_fns.policy_shardings,
                                     prompt_group=spec.prompt_group,
                                     reference_outputs=spec.rl.uses_reference)
  hook = None
  if spec.run.debug_nonfinite_at_step >= 0:
    poison_from = spec.run.debug_nonfinite_at_step
    poison_to = poison_from + spec.run.debug_nonfinite_count
    hook = lambda step: (step >= poison_from) & (step < poison_to)
  hp = spec.rl.update_hparams(spec.rollout.temperature, spec.rollout.max_new_tokens,
                              spec.prompt_group)
  update_fn = steps_lib.make_update_fn(model_cfg, hp, optimizer, mesh, state_fns.shardings,
                                       nonfinite_hook=hook, lora=lora,
                                       base_shardings=state_fns.policy_shardings)
  return score_fn, update_fn


def build_step_fns(spec: TrainerSpec, mesh: Any, model_cfg: decoder.DecoderConfig,
                   tokenizer: Any, reward_models: Any, ref_params: Any, state_fns: Any,
                   optimizer: Any, lora: lora_lib.LoraSpec | None, base_key: Array) -> StepFns:
  """Jits the scoring, advantage and update programs of `spec` on `mesh`."""
  # The reward encoder runs in the same jit as the policy scoring, on the same mesh; its
  # parameters are replicated (USE-m3 is 30 MB). Host-side engines embed on the host.
  encoder = None if reward_models is None else reward_models.encoder
  encoder_params = embed_fn = None
  if encoder is not None and encoder.params is not None and not spec.rl.is_sft:
    encoder_params = distributed.global_from_host(encoder.params, shd.replicated(mesh))
    embed_fn = _segment_embedder(encoder)

  score_fn, update_fn = make_device_steps(spec, mesh, model_cfg, state_fns, optimizer, lora,
                                          embed_fn)
  g = spec.pipeline.group_size
  advantage_fn = jax.jit(lambda *a: adv_lib.batch_advantages(spec.rl, g, *a))
  stop_ids = tuple(tuple(tokenizer.encode(s, add_special_tokens=False))
                   for s in spec.rollout.stop_strings)
  return StepFns(spec=spec, mesh=mesh, model_cfg=model_cfg, tokenizer=tokenizer,
                 reward_models=reward_models, ref_params=ref_params, lora=lora,
                 encoder_params=encoder_params, score_fn=score_fn,
                 update_fn=update_fn, advantage_fn=advantage_fn, stop_ids=stop_ids,
                 eos_ids=tuple(sampling.eos_ids(model_cfg, tokenizer)), base_key=base_key)


# ---------------------------------------------------------------------------------------------
# Stage 1: rollout.
# ---------------------------------------------------------------------------------------------


def rollout_key(base_key: Array, step: int, draw: int = 0) -> Array:
  """The sampling key of `step` (and of its `draw`-th extra batch under dynamic sampling): a
  resumed run draws the same completions."""
  key = jax.random.fold_in(base_key, 2 * step)
  return key if draw == 0 else jax.random.fold_in(key, draw)


def rollout_stage(fns: StepFns, state: Any, prompts: PromptBatch, step: int, draw: int = 0
                  ) -> Rollout:
  """G completions per prompt from the current policy (SFT: the pivot references)."""
  if fns.spec.rl.is_sft:
    return reference_rollout(prompts, fns.tokenizer, fns.model_cfg,
                             fns.spec.rollout.max_new_tokens)
  params, adapters, scale = fns.policy(state)
  ro = fns.spec.rollout
  g = prompts.group_size
  out = sampling.sample(
      params, fns.model_cfg, prompts.prompt_tokens, prompts.prompt_valid,
      rollout_key(fns.base_key, step, draw), num_samples=g, max_new_tokens=ro.max_new_tokens,
      temperature=ro.temperature, top_k=ro.top_k, top_p=ro.top_p, eos_ids=list(fns.eos_ids),
      stop_token_sequences=[list(s) for s in fns.stop_ids], max_len=ro.max_new_tokens,
      prompt_buckets=(prompts.prompt_tokens.shape[1],), mesh=fns.mesh, lora=adapters,
      lora_scale=scale)
  out = distributed.host_value(out)  # every host: all rows (multi-host: all-gathered)
  # np.repeat keeps each prompt's G rows together: the layout `prompt_group` relies on.
  prompt_tokens = np.repeat(prompts.prompt_tokens, g, axis=0)
  prompt_valid = np.repeat(prompts.prompt_valid, g, axis=0)
  lengths = np.asarray(out.lengths)
  # Only the columns the longest completion needs go on (every host holds every row, so
  # every host keeps the same width).
  width = completion_width(lengths, ro.max_new_tokens)
  comp_valid = np.asarray(out.valid, bool)[:, :width]
  comp_tokens = np.asarray(out.tokens)[:, :width]
  tokens = np.concatenate([prompt_tokens, np.where(comp_valid, comp_tokens,
                                                   fns.model_cfg.pad_token_id)], axis=1)
  texts = fns.tokenizer.batch_decode([row[m] for row, m in zip(comp_tokens, comp_valid)],
                                     skip_special_tokens=True)
  return Rollout(tokens=tokens.astype(np.int32),
                 valid=np.concatenate([prompt_valid, comp_valid], axis=1),
                 completion_mask=comp_valid,
                 # log softmax(logits / temperature): without top-k/top-p this is the
                 # distribution sampled from and the one the update's ratio uses.
                 sampler_logp=np.asarray(out.sample_logprobs)[:, :width],
                 texts=tuple(sampling.truncate_at_stop(t, ro.stop_strings) for t in texts),
                 finished=np.asarray(out.finished), lengths=lengths,
                 langs=prompts.row_langs())


def completion_width(lengths: np.ndarray, max_new: int) -> int:
  """Completion columns a batch needs: its longest completion rounded up to a sampler
  completion bucket (powers of two: scoring and the update compile a few shapes), at most
  `max_new`. Columns past every completion are padding that no loss, advantage or metric
  reads, so cutting them changes nothing but the cost of scoring and the update."""
  longest = max(int(np.max(lengths, initial=0)), 1)
  return min(padding.bucket_length(longest, sampling.COMPLETION_BUCKETS), max_new)


def set_completion_width(rollout: Rollout, width: int, pad_id: int) -> Rollout:
  """The rollout with `width` completion columns: trailing padding cut or added."""
  m = rollout.completion_mask.shape[1]
  if width < int(np.max(rollout.lengths, initial=0)):
    raise ValueError(f"completion width {width} would cut a completion of"
                     f" {int(np.max(rollout.lengths))} tokens")
  p = rollout.tokens.shape[1] - m
  if width <= m:
    cut = lambda x, start=0: x[:, :start + width]
    return dataclasses.replace(rollout, tokens=cut(rollout.tokens, p),
                               valid=cut(rollout.valid, p),
                               completion_mask=cut(rollout.completion_mask),
                               sampler_logp=cut(rollout.sampler_logp))
  grow = lambda x, fill: np.pad(x, [(0, 0), (0, width - m)], constant_values=fill)
  return dataclasses.replace(rollout, tokens=grow(rollout.tokens, pad_id),
                             valid=grow(rollout.valid, False),
                             completion_mask=grow(rollout.completion_mask, False),
                             sampler_logp=grow(rollout.sampler_logp, 0.0))


def reference_rollout(prompts: PromptBatch, tokenizer: Any, model_cfg: Any, max_new: int
                      ) -> Rollout:
  """SFT: the pivot references as completions (EOS appended when it fits), no sampling."""
  eos = tokenizer.eos_token_id
  eos = int(eos) if eos is not None else int(model_cfg.eos_token_ids[0])
  b = prompts.prompt_tokens.shape[0]
  comp = np.full((b, max_new), model_cfg.pad_token_id, np.int32)
  comp_valid = np.zeros((b, max_new), bool)
  finished = np.zeros((b,), bool)
  for i, text in enumerate(prompts.reference):
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos]
    finished[i] = len(ids) <= max_new  # a reference cut at the cap teaches no stopping
    ids = ids[:max_new]
    comp[i, :len(ids)] = ids
    comp_valid[i, :len(ids)] = True
  return Rollout(tokens=np.concatenate([prompts.prompt_tokens, comp], axis=1),
                 valid=np.concatenate([prompts.prompt_valid, comp_valid], axis=1),
                 completion_mask=comp_valid, sampler_logp=np.zeros(comp.shape, np.float32),
                 texts=prompts.reference, finished=finished,
                 lengths=comp_valid.sum(axis=1), langs=prompts.langs)


# ---------------------------------------------------------------------------------------------
# Stage 2: score.
# ---------------------------------------------------------------------------------------------


def score_stage(fns: StepFns, state: Any, prompts: PromptBatch, rollout: Rollout,
                timer: metrics_lib.StepTimer | None = None) -> Scored:
  """Reference (and policy) log-probs, values and policy-side embeddings, in one jit.

  The jit is dispatched first; the host text scores (final answers, guards, translations)
  are computed while the devices run. Long policy segments are then re-embedded on the host
  the way the pivot step embedded the references. The host text work covers the rows this
  host's devices hold (`distributed.local_rows`: every row on one host, its own slice of the
  batch on each host of a pod); `reward_stage` gathers every row's reward.
  """
  timer = timer or metrics_lib.StepTimer()
  sft = fns.spec.rl.is_sft
  timer.start("host_text")
  n = len(rollout.texts)
  mine = distributed.local_rows(fns.batch_sharding, n)
  device_batch = distributed.global_from_host(
      {"tokens": rollout.tokens, "valid": rollout.valid,
       "completion_mask": rollout.completion_mask}, fns.batch_sharding)
  # Each completion is parsed once, for the scoring jit's encoder and for the reward.
  scores_text = not sft and fns.reward_models is not None
  parsed = (tuple(score_lib.parse(rollout.texts[r], rollout.langs[r]) for r in mine)
            if fns.encoder_in_jit or scores_text else ())
  segments = None
  if fns.encoder_in_jit:
    segments = [p.segments() for p in parsed]
    device_batch["enc_batch"] = distributed.global_from_rows(
        host_scoring.encoder_batch(fns.encoder, segments, score_lib.SEGMENTS), mine, n,
        fns.batch_sharding)
  timer.stop("host_text")

  timer.start("scoring")  # dispatched, not waited for
  extra = (fns.encoder_params,) if fns.encoder_in_jit else ()
  outputs = fns.score_fn(state.params, fns.ref_params, device_batch, *extra)
  timer.stop("scoring")

  timer.start("host_text")
  items, text_rows = (), ()
  # SFT samples nothing and scores nothing; external rewards need no host text scores.
  if scores_text:
    items = tuple(host_scoring.reward_items(prompts, rollout.texts, fns.spec.reward.encoder,
                                            mine, parsed))
    text_rows = tuple(score_lib.text_scores(fns.spec.reward, fns.reward_models, list(items)))
  timer.stop("host_text")

  timer.start("scoring")  # what is left of the device work once the host is done
  policy_embeddings = None
  if fns.encoder_in_jit:
    policy_embeddings = host_scoring.embed_long_segments_on_host(
        fns.encoder, segments, score_lib.SEGMENTS,
        distributed.rows_of(outputs["embeddings"], mine))  # [R, S, E]
  jax.block_until_ready(outputs)
  timer.stop("scoring")
  return Scored(device_batch=device_batch, outputs=outputs, rows=mine, items=items,
                text_rows=text_rows, policy_embeddings=policy_embeddings)


# ---------------------------------------------------------------------------------------------
# Stage 3: reward.
# ---------------------------------------------------------------------------------------------


def reward_stage(fns: StepFns, rollout: Rollout, scored: Scored) -> Rewards:
  """The reward of every row (similarity to the cached pivot embeddings, guards, answers).

  Each host finishes the rows it scored; every host then holds every row's record.
  """
  spec = fns.spec
  rows: tuple[dict[str, Any], ...] = ()
  if spec.rl.is_sft:
    rewards = np.zeros((len(rollout.texts),), np.float32)
  else:
    items = [dict(item) for item in scored.items]  # the scorer fills them; Scored stays as is
    if scored.policy_embeddings is not None:
      for item, emb in zip(items, scored.policy_embeddings):
        item["response_embeddings"] = dict(zip(score_lib.SEGMENTS, emb))
    mine = score_lib.finish_scores(spec.reward, fns.reward_models, items,
                                   [dict(r) for r in scored.text_rows])
    rows = tuple(distributed.gather_rows(mine, scored.rows, len(rollout.texts)))
    rewards = np.asarray([r["reward"] for r in rows], np.float32)
  return Rewards(rows=rows, rewards=rewards, overlong=_overlong(fns, rollout))


def _overlong(fns: StepFns, rollout: Rollout) -> np.ndarray:
  """The shaping term of every row: it joins the reward the advantages see, while
  `reward_mean` stays the reward."""
  spec = fns.spec
  return np.asarray(shaping.overlong_penalty(
      rollout.lengths, spec.rollout.max_new_tokens, spec.rl.overlong_buffer,
      spec.rl.overlong_penalty), np.float32)


def external_rewards(fns: StepFns, rollout: Rollout, values: Sequence[float]) -> Rewards:
  """The reward stage for rewards computed outside the reward layer, one value per row
  (pbrl-compare's TRL-style reward functions); the configured shaping is added as for ours."""
  rewards = np.asarray(values, np.float32)
  if rewards.shape != (len(rollout.texts),):
    raise ValueError(f"external rewards: expected {len(rollout.texts)} values (one per"
                     f" completion), got shape {rewards.shape}")
  return Rewards(rows=(), rewards=rewards, overlong=_overlong(fns, rollout))


# ---------------------------------------------------------------------------------------------
# Stage 4: advantages.
# ---------------------------------------------------------------------------------------------


def advantage_stage(fns: StepFns, rollout: Rollout, scored: Scored, rewards: Rewards
                    ) -> UpdateBatch:
  """The update's inputs: old and reference log-probs, advantages (and PPO returns)."""
  spec = fns.spec
  sh = fns.batch_sharding
  dev, out = scored.device_batch, scored.outputs
  arrays = {k: dev[k] for k in ("tokens", "valid", "completion_mask")}
  if spec.rl.mask_truncated and not spec.rl.is_sft:  # DAPO's overlong filtering
    arrays["completion_mask"] = distributed.global_from_host(
        np.asarray(shaping.mask_truncated(rollout.completion_mask, rollout.finished)), sh)
  sampler_logp = distributed.global_from_host(rollout.sampler_logp * rollout.completion_mask,
                                              sh)
  # On-policy the sampler's log-probs stand in; SFT's update reads none
  # (`UpdateHParams.ratio_to_self`): the zeros of its reference rollout go in.
  scored_policy = scores_policy(spec)
  old_logp = out["logp"] if scored_policy else sampler_logp
  arrays["old_logp"] = old_logp
  metrics = {}
  if scored_policy:
    # The trainer's own old log-probs against the sampler's: the mismatch, and its
    # correction weights when one is configured.
    weights, metrics = _rollout_correction(spec.rl, out["logp"], sampler_logp,
                                           dev["completion_mask"])
    if spec.rl.rollout_correction is not losses.RolloutCorrection.OFF:
      arrays["rollout_weight"] = weights
  if "ref_logp" in out:  # scored only when a KL term reads it (`RLSpec.uses_reference`)
    arrays["ref_logp"] = out["ref_logp"]
  arrays["advantages"], returns = fns.advantage_fn(
      distributed.global_from_host(rewards.shaped, sh), dev["completion_mask"], old_logp,
      out.get("ref_logp"), out.get("values"))
  if spec.rl.is_ppo:
    arrays["returns"] = returns
    arrays["old_values"] = out["values"]
  return UpdateBatch(arrays=jax.device_put(arrays, sh), metrics=metrics)


@functools.partial(jax.jit, static_argnums=0)
def _rollout_correction(rl: Any, trainer_logp: Array, sampler_logp: Array, mask: Array
                        ) -> tuple[Array, dict[str, Array]]:
  """`losses.rollout_correction_weights` of the configured mode; with the correction off,
  only its statistics (token level, unbounded)."""
  mode = rl.rollout_correction
  if mode is losses.RolloutCorrection.OFF:
    return losses.rollout_correction_weights(trainer_logp, sampler_logp, mask,
                                             losses.RolloutCorrection.TOKEN_TRUNCATE,
                                             None, None)
  return losses.rollout_correction_weights(trainer_logp, sampler_logp, mask, mode,
                                           rl.rollout_correction_low,
                                           rl.rollout_correction_high)


# ---------------------------------------------------------------------------------------------
# Stage 5: update.
# ---------------------------------------------------------------------------------------------


def update_stage(fns: StepFns, state: Any, batch: UpdateBatch) -> tuple[Any, dict[str, float]]:
  """One optimizer step (or epochs x minibatches); the metrics come back to the host."""
  state, metrics = fns.update_fn(state, batch.arrays, *fns.update_extra())
  metrics = {**metrics, **batch.metrics}
  return state, {k: float(v) for k, v in distributed.host_value(metrics).items()}


# ---------------------------------------------------------------------------------------------
# Stage 6: the step's record.
# ---------------------------------------------------------------------------------------------


REWARD_LOG_KEYS = ("reward", "base", "gate", "answer_precision", "reasoning_coherence",
                   "similarity", "answer_match", "answer_closeness", "format", "verifiable",
                   "language_consistency",
                   "gate_language", "gate_copy", "gate_length", "gate_repetition", "gate_empty",
                   "repetition", "length_ratio", "mt_similarity")
LANG_LOG_KEYS = ("reward", "answer_precision", "answer_match", "reasoning_coherence",
                 "verifiable", "language_consistent", "length_capped", "length_ratio")
SAMPLE_KEYS = ("reward", "answer_match", "format", "language_consistent",
               "language_undetermined")


def step_record(fns: StepFns, rollout: Rollout, scored: Scored, rewards: Rewards,
                update_metrics: dict[str, float]) -> dict[str, float]:
  """The step's metrics: the update's, then the reward's (SFT: the references' NLL)."""
  spec = fns.spec
  record = dict(update_metrics)
  if spec.rl.is_sft:
    # The update's own loss is -1 by construction (unit advantages at ratio 1); the SFT
    # loss is the reference tokens' NLL under the policy before this update, which the
    # update measures in its forward (`UpdateHParams.ratio_to_self`).
    record["loss"] = record["sft/nll"] = float(record.pop("nll"))
    record["rollout/mean_length"] = float(np.mean(rollout.lengths))
    return record
  record.update(reward_record(rewards, rollout, spec.pipeline.group_size,
                              shaping_on=spec.rl.overlong_buffer > 0))
  # Rows whose text the host writing the metrics (process 0) scored: every row on one host,
  # its own slice of the batch on a pod.
  record["host/scored_rows"] = float(len(scored.rows))
  if spec.rl.mask_truncated:  # rows the update left out (DAPO's overlong filtering)
    record["rollout/loss_masked_frac"] = float(np.mean(~rollout.finished))
  return record


def reward_record(rewards: Rewards, rollout: Rollout, g: int, shaping_on: bool
                  ) -> dict[str, float]:
  """The reward side of one step's metrics: means, components, guards, per language."""
  capped = ~rollout.finished
  rows = [dict(r, length_capped=float(c)) for r, c in zip(rewards.rows, capped)]
  record = {k: float(v) for k, v in jax.device_get(
      adv_lib.group_spread_metrics(np.asarray(rewards.rewards), g)).items()}
  if shaping_on:
    record["reward_shaped_mean"] = float(np.mean(rewards.shaped))
    record["reward/overlong_penalty"] = float(np.mean(rewards.overlong))
  for k in REWARD_LOG_KEYS:
    vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float))]
    if vals:
      record[f"reward/{k}"] = float(np.mean(vals))
  record.update({
      "rollout/length_capped_frac": float(np.mean(capped)),
      # Rows whose reward came out non-finite (their NaN reaches the update, which is then
      # skipped and counted by the non-finite guard).
      "reward/nonfinite_frac": float(np.mean([bool(r.get("nonfinite")) for r in rows])),
      "rollout/repetition_frac": float(np.mean([r.get("gate_repetition", 1.0) < 1.0
                                                for r in rows])),
      "rollout/mean_length": float(np.mean(rollout.lengths)),
      "rollout/language_consistent_frac": float(np.mean([r["language_consistent"]
                                                         for r in rows])),
      "rollout/language_undetermined_frac": float(np.mean([r["language_undetermined"]
                                                           for r in rows])),
  })
  determined = [r["language_consistent"] for r in rows if not r["language_undetermined"]]
  if determined:  # the rate to compare between steps: undetermined answers are no evidence
    record["rollout/language_consistent_determined_frac"] = float(np.mean(determined))
  record.update(per_language(rollout.langs, rows, LANG_LOG_KEYS))
  return record


def per_language(langs: Sequence[str], rows: Sequence[dict[str, Any]], keys: Sequence[str]
                 ) -> dict[str, float]:
  """`lang/{lang}/{key}` means over the rows of each language."""
  out = {}
  for lang in sorted(set(langs)):
    sel = [r for l, r in zip(langs, rows) if l == lang]
    for k in keys:
      vals = [float(r[k]) for r in sel if isinstance(r.get(k), (int, float))]
      if vals:
        out[f"lang/{lang}/{k}"] = float(np.mean(vals))
  return out


def sample_records(rollout: Rollout, rewards: Rewards, g: int) -> list[dict[str, Any]]:
  """The first completion of every group, for `samples.jsonl` and the report's table."""
  rows = rewards.rows
  return [{"lang": rollout.langs[i], "text": rollout.texts[i],
           "length": int(rollout.lengths[i]), "capped": bool(not rollout.finished[i]),
           **{k: float(rows[i][k]) for k in SAMPLE_KEYS if k in rows[i]}}
          for i in range(0, len(rows), g)]


def sample_text(rollout: Rollout, rewards: Rewards, g: int) -> str:
  """The first completion of every group as text, for TensorBoard."""
  return "\n\n".join(
      f"[{rollout.langs[i]}] reward={rewards.rows[i]['reward']:.3f}\n{rollout.texts[i][:600]}"
      for i in range(0, len(rewards.rows), g))
