"""The PB-RLSVR trainer: GRPO or PPO on a multilingual policy, one file, top to bottom.

  pbrl-train --config configs/tiny.py --workdir /tmp/tiny
  pbrl-train --config configs/demo.py --workdir runs/demo

Stages: config -> mesh -> models -> data -> shapes & shardings -> step functions -> restore
-> loop. One training step is

  rollout (jit: sampler, G completions per prompt, shared prefill)
  -> host text work (detokenise, reward-encoder tokens)
  -> scoring (one jit, dispatched: policy and reference log-probs, values, reward-encoder
     embeddings), and while it runs, the rest of the host text work (final answers, guards,
     translations for MT rewards)
  -> rewards (similarity to the cached pivot embeddings) and advantages (GRPO group-relative, or GAE for PPO)
  -> update (jit, donated state) -> metrics -> checkpoint.

Resume is exact: the rollout key of step s is fold_in(seed key, s), the data iterator state
and the train state are in the same Orbax checkpoint, so a resumed run replays nothing and
skips nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pbrl_jax import checkpoint as ckpt_lib
from pbrl_jax import config_schema
from pbrl_jax import distributed
from pbrl_jax import metrics as metrics_lib
from pbrl_jax import sampling
from pbrl_jax.models import decoder
from pbrl_jax.models import lora as lora_lib
from pbrl_jax.models import sharding as shd
from pbrl_jax.rl import advantages as adv_lib
from pbrl_jax.rl import kl as kl_lib
from pbrl_jax.rl import shaping
from pbrl_jax.rl import steps as steps_lib
from pbrl_jax.train_spec import TrainerSpec

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT finish the current step, save, and exit cleanly.
# ---------------------------------------------------------------------------------------------


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop checks it between steps."""

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def install(self) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C abandons the step
    self.signal = signum
    logging.warning("received signal %d: finishing this step, saving, exiting", signum)


# ---------------------------------------------------------------------------------------------
# Host-side text work of one rollout.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Rollout:
  """One step's prompts and completions on the host, row i*G + j = sample j of prompt i."""

  tokens: np.ndarray  # [BG, P+M] prompt (left-padded) then completion (right-padded)
  valid: np.ndarray  # [BG, P+M]
  completion_mask: np.ndarray  # [BG, M]
  sampler_logp: np.ndarray  # [BG, M] log-probs of the sampling distribution
  texts: list[str]
  finished: np.ndarray  # [BG] stopped by EOS (not by the length cap)
  lengths: np.ndarray  # [BG]


def _run_rollout(params, adapters, lora_scale, model_cfg, batch, rng, spec: TrainerSpec, mesh,
                 tokenizer, stop_ids: Sequence[Sequence[int]]) -> Rollout:
  g = int(batch["group_size"])
  out = sampling.sample(
      params, model_cfg, np.asarray(batch["prompt_tokens"], np.int32),
      np.asarray(batch["prompt_valid"], bool),
      rng, num_samples=g, max_new_tokens=spec.rollout.max_new_tokens,
      temperature=spec.rollout.temperature, top_k=spec.rollout.top_k, top_p=spec.rollout.top_p,
      stop_token_sequences=stop_ids, max_len=spec.rollout.max_new_tokens,
      prompt_buckets=(batch["prompt_tokens"].shape[1],), mesh=mesh, lora=adapters,
      lora_scale=lora_scale)
  out = distributed.host_value(out)  # every host: all rows (multi-host: all-gathered)
  # np.repeat keeps each prompt's G rows together: the layout `prompt_group` relies on.
  prompt_tokens = np.repeat(np.asarray(batch["prompt_tokens"]), g, axis=0)
  prompt_valid = np.repeat(np.asarray(batch["prompt_valid"]), g, axis=0).astype(bool)
  comp_valid = np.asarray(out.valid, bool)
  tokens = np.concatenate([prompt_tokens, np.where(comp_valid, out.tokens,
                                                   model_cfg.pad_token_id)], axis=1)
  valid = np.concatenate([prompt_valid, comp_valid], axis=1)
  texts = tokenizer.batch_decode([row[m] for row, m in zip(out.tokens, comp_valid)],
                                 skip_special_tokens=True)
  texts = [sampling.truncate_at_stop(t, spec.rollout.stop_strings) for t in texts]
  return Rollout(tokens=tokens.astype(np.int32), valid=valid,
                 completion_mask=comp_valid,
                 # log softmax(logits / temperature): without top-k/top-p this is the
                 # distribution sampled from and the one the update's ratio uses.
                 sampler_logp=np.asarray(out.sample_logprobs),
                 texts=texts, finished=np.asarray(out.finished),
                 lengths=np.asarray(out.lengths))


def _reference_rollout(batch: dict[str, Any], tokenizer: Any, model_cfg: Any, max_new: int
                       ) -> Rollout:
  """SFT: the pivot references as completions (EOS appended when it fits), no sampling."""
  eos = tokenizer.eos_token_id
  eos = int(eos) if eos is not None else int(model_cfg.eos_token_ids[0])
  prompt_tokens = np.asarray(batch["prompt_tokens"], np.int32)
  prompt_valid = np.asarray(batch["prompt_valid"], bool)
  b = prompt_tokens.shape[0]
  comp = np.full((b, max_new), model_cfg.pad_token_id, np.int32)
  comp_valid = np.zeros((b, max_new), bool)
  finished = np.zeros((b,), bool)
  for i, text in enumerate(batch["reference"]):
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos]
    finished[i] = len(ids) <= max_new  # a reference cut at the cap teaches no stopping
    ids = ids[:max_new]
    comp[i, :len(ids)] = ids
    comp_valid[i, :len(ids)] = True
  return Rollout(tokens=np.concatenate([prompt_tokens, comp], axis=1),
                 valid=np.concatenate([prompt_valid, comp_valid], axis=1),
                 completion_mask=comp_valid, sampler_logp=np.zeros(comp.shape, np.float32),
                 texts=list(batch["reference"]), finished=finished,
                 lengths=comp_valid.sum(axis=1))


def make_advantage_fn(spec: TrainerSpec) -> Any:
  """Jitted advantages (and PPO returns) of one batch, from global arrays on the mesh.

  GRPO: group-relative advantages of the sequence rewards, broadcast over completion tokens.
  PPO: sequence reward at the last token (minus beta * KL per token when the KL goes into the
  reward), then GAE with the value head's values. SFT: 1 on every reference token.
  """
  rl = spec.rl
  g = spec.pipeline.group_size

  def advantages(rewards, completion_mask, old_logp, ref_logp, values):
    mask = completion_mask.astype(jnp.float32)
    returns = None
    if rl.is_sft:
      return mask, None
    if rl.is_ppo:
      kl_tok = kl_lib.kl_estimate(rl.kl_estimator, old_logp, ref_logp)
      beta = rl.beta if rl.kl_placement is kl_lib.KLPlacement.REWARD else 0.0
      token_rewards = kl_lib.kl_penalized_rewards(rewards, kl_tok, mask, beta)
      adv, returns = adv_lib.gae(token_rewards, values, mask, rl.gamma, rl.lam)
    else:
      adv = adv_lib.compute_group_advantages(rl.advantage, rewards, g, std_floor=rl.std_floor)
      adv = jnp.broadcast_to(adv[:, None], mask.shape) * mask
    if rl.whiten_advantages:
      adv = adv_lib.masked_whiten(adv, mask)
    return adv, returns

  return jax.jit(advantages)


def _reward_record(rows: list[dict[str, Any]], rewards: np.ndarray, shaped: np.ndarray,
                   overlong: np.ndarray, rollout: Rollout, langs: Sequence[str], g: int,
                   shaping_on: bool) -> dict[str, float]:
  """The reward side of one step's metrics: means, components, guards, per language."""
  capped = ~rollout.finished
  for r, c in zip(rows, capped):
    r["length_capped"] = float(c)
  record = {k: float(v) for k, v in
            jax.device_get(adv_lib.group_spread_metrics(jnp.asarray(rewards), g)).items()}
  if shaping_on:
    record["reward_shaped_mean"] = float(np.mean(shaped))
    record["reward/overlong_penalty"] = float(np.mean(overlong))
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
  record.update(_per_language(langs, rows, LANG_LOG_KEYS))
  return record


def _sample_records(rows: Sequence[dict[str, Any]], rollout: Rollout, langs: Sequence[str],
                    g: int) -> list[dict[str, Any]]:
  """The first completion of every group, for `samples.jsonl` and the report's table."""
  keys = ("reward", "answer_match", "format", "language_consistent", "language_undetermined")
  return [{"lang": langs[i], "text": rollout.texts[i], "length": int(rollout.lengths[i]),
           "capped": bool(not rollout.finished[i]),
           **{k: float(rows[i][k]) for k in keys if k in rows[i]}}
          for i in range(0, len(rows), g)]


def _reward_items(batch: dict[str, Any], texts: Sequence[str], g: int, encoder_name: str
                  ) -> list[dict[str, Any]]:
  """One reward item per completion (row i*G + j), with the cached reference embeddings."""
  items = []
  for row, text in enumerate(texts):
    i = row // g
    emb = batch["ref_emb"]
    # The pivot step cached the reference's full text and reasoning; the short answer part
    # is embedded with the policy side (score_batch fills missing segments).
    cached = {seg: emb[f"{encoder_name}/{field}"][i]
              for seg, field in (("full", "response"), ("reasoning", "reasoning"))
              if f"{encoder_name}/{field}" in emb} or None
    items.append({
        "lang": batch["langs"][i], "question": batch["questions"][i], "response": text,
        "reference": batch["reference"][i], "reference_answer": batch["reference_answer"][i],
        "gold": batch["gold"][i], "reference_embeddings": cached,
    })
  return items


def _encoder_batch(encoder: Any, segments: Sequence[dict[str, str]], keys: Sequence[str]
                   ) -> dict[str, np.ndarray]:
  """Reward-encoder inputs [BG, S, ...] for S text segments of each completion.

  Sequences are padded to the encoder's longest bucket so the scoring program has one shape
  (zeros beyond the mask are never attended to or pooled).
  """
  flat = [seg[k] for seg in segments for k in keys]
  tok = encoder.tokenize(flat)
  length = max(encoder.buckets)
  out = {}
  for name, arr in tok.items():
    arr = np.asarray(arr)
    if arr.ndim >= 2 and arr.shape[1] < length:
      arr = np.pad(arr, [(0, 0), (0, length - arr.shape[1])] + [(0, 0)] * (arr.ndim - 2))
    out[name] = arr.reshape((len(segments), len(keys)) + arr.shape[1:])
  return out


def embed_long_segments_on_host(encoder: Any, segments: Sequence[dict[str, str]],
                                keys: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
  """`embeddings` [BG, S, E] with every segment longer than one window re-embedded on the host.

  The scoring jit embeds each segment from its first window (`encoder.tokenize` truncates),
  while the pivot step embeds references with `encoder.encode`, which averages the windows of
  a long text. Re-embedding the few long policy segments with `encode` makes both sides embed
  the same text the same way. Returns a copy; short segments keep the jit's embeddings.
  """
  long = [(i, k, seg[key]) for i, seg in enumerate(segments) for k, key in enumerate(keys)
          if encoder.window_count(seg[key]) > 1]
  out = np.array(embeddings, copy=True)
  if long:
    for (i, k, _), emb in zip(long, encoder.encode([text for _, _, text in long])):
      out[i, k] = emb
  return out


def _per_language(langs: Sequence[str], rows: Sequence[dict[str, Any]], keys: Sequence[str]
                  ) -> dict[str, float]:
  out = {}
  for lang in sorted(set(langs)):
    sel = [r for l, r in zip(langs, rows) if l == lang]
    for k in keys:
      vals = [float(r[k]) for r in sel if isinstance(r.get(k), (int, float))]
      if vals:
        out[f"lang/{lang}/{k}"] = float(np.mean(vals))
  return out


REWARD_LOG_KEYS = ("reward", "base", "gate", "answer_precision", "reasoning_coherence",
                   "similarity", "answer_match", "answer_closeness", "format", "verifiable",
                   "language_consistency",
                   "gate_language", "gate_copy", "gate_length", "gate_repetition", "gate_empty",
                   "repetition", "length_ratio", "mt_similarity")
LANG_LOG_KEYS = ("reward", "answer_precision", "answer_match", "reasoning_coherence",
                 "verifiable", "language_consistent", "length_capped", "length_ratio")


# ---------------------------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------------------------


def _config_and_tokenizer(path: str):
  """Architecture and tokenizer of a model file or directory, without its weights."""
  if os.path.isdir(path):
    from pbrl_jax.models.hf import read_hf_config  # pylint: disable=g-import-not-at-top
    from pbrl_jax.models.tokenizer import load_hf_tokenizer  # pylint: disable=g-import-not-at-top
    return read_hf_config(path), load_hf_tokenizer(path)
  from pbrl_jax.models.gguf_loader import GGUFFile, gguf_config  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models.tokenizer import tokenizer_from_gguf_metadata  # pylint: disable=g-import-not-at-top
  f = GGUFFile(path)
  return gguf_config(f), tokenizer_from_gguf_metadata(f.metadata, path)


def load_policy(model: Any, seed: int):
  """(DecoderConfig, host params, tokenizer) of the policy named by `config.model`."""
  from pbrl_jax import models  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models import embedded  # pylint: disable=g-import-not-at-top
  path = embedded.smollm2_gguf_path() if model.path == "embedded:smollm2" else model.path
  if model.random_init:
    cfg, tokenizer = _config_and_tokenizer(path)
    cfg = cfg.replace(dtype=model.dtype, param_dtype=model.param_dtype, remat=model.remat,
                      **model.overrides)
    params = jax.jit(decoder.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(seed))
    return cfg, params, tokenizer
  bundle = models.from_pretrained(path, dtype=model.dtype, param_dtype=model.param_dtype)
  cfg = bundle.config.replace(remat=model.remat)
  if model.overrides:
    cfg = cfg.replace(**model.overrides)
  return cfg, bundle.params, bundle.tokenizer


# ---------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
  os.replace(tmp, path)


def train(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) training; returns a summary dict.

  Args:
    config: the ml_collections ConfigDict of a config file.
    workdir: run directory; resumed when it holds a checkpoint.

  Returns:
    {'last_step', 'stopped_by', 'workdir', ...}.
  """
  # The mesh and axis-rule contexts entered while training are left on every exit, also
  # when a bad config or a missing file raises half-way (tests call train() in-process).
  with contextlib.ExitStack() as scope:
    return _train(config, workdir, scope)


def _train(config: Any, workdir: str, scope: contextlib.ExitStack) -> dict[str, Any]:
  """The body of `train`; the contexts it enters go on `scope`."""
  from pbrl_jax import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import pivot as pivot_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import sources  # pylint: disable=g-import-not-at-top
  from pbrl_jax.rewards import score as score_lib  # pylint: disable=g-import-not-at-top

  # ============================== Config ====================================================
  spec = TrainerSpec.from_config(config)
  run = spec.run
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    _write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())

  # ============================== Mesh ======================================================
  try:
    mesh = shd.make_mesh(spec.mesh.data, spec.mesh.fsdp, spec.mesh.tensor)
  except ValueError as e:
    raise config_schema.ConfigError(
        f"config.mesh: data={spec.mesh.data} fsdp={spec.mesh.fsdp} tensor={spec.mesh.tensor}"
        f" does not fit the {jax.device_count()} devices: {e}") from e
  data_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  g = spec.pipeline.group_size
  global_batch = spec.pipeline.global_batch_size
  if (global_batch * g) % data_devices:
    raise config_schema.ConfigError(
        f"config.data.global_batch_size: {global_batch} prompts x group_size {g} ="
        f" {global_batch * g} sequences do not split over the mesh's {data_devices}"
        " data-parallel devices (mesh.data x mesh.fsdp)")
  if spec.rl.is_sft and g != 1:
    raise config_schema.ConfigError(
        f"config.data.group_size: SFT trains on one reference per prompt, set 1 (got {g})")
  if g < 2 and not spec.rl.is_ppo and not spec.rl.is_sft:
    raise config_schema.ConfigError(
        f"config.data.group_size: GRPO needs G >= 2 completions per prompt, got {g}")

  # Trace every step under the mesh and the logical axis rules, so the decoder's activation
  # constraints apply (without them FSDP gathers whole batches onto every device).
  scope.enter_context(jax.set_mesh(mesh))
  scope.enter_context(shd.axis_rules())

  # ============================== Models ====================================================
  model_cfg, host_params, tokenizer = load_policy(spec.model, run.seed)
  reward_models = (score_lib.RewardModels(encoder=None) if spec.rl.is_sft
                   else score_lib.load_reward_models(spec.reward))
  encoder_name = spec.reward.encoder
  logging.info("policy: %s, %d layers, %.1fM params", model_cfg.model_type,
               model_cfg.num_layers, decoder.count_params(host_params) / 1e6)

  # ============================== Data ======================================================
  ref_dir = pivot_lib.reference_dir(workdir)
  if not os.path.exists(os.path.join(ref_dir, pivot_lib.MANIFEST)):
    raise FileNotFoundError(
        f"no pivot references in {ref_dir}: build them first with `pbrl-pivot --config ..."
        f" --workdir {workdir}` (add --oracle for gsm_symbolic's English solutions, or"
        " --references=FILE.jsonl to import references made elsewhere)")
  references = pivot_lib.load_references(ref_dir)
  source = sources.load_source(spec.data, workdir)
  manifest = pivot_lib.load_manifest(ref_dir)
  if manifest.get("source_sha256") != source.sha256:
    logging.warning(
        "the pivot references in %s were built from %r (sha256 %s), the data section now gives"
        " %r (sha256 %s); questions without a reference are handled by"
        " data.missing_reference=%r", ref_dir, manifest.get("source"),
        manifest.get("source_sha256"), source.description, source.sha256,
        spec.data.missing_reference)
  if encoder_name not in manifest.get("encoders", {}) and spec.reward.uses_encoder:
    logging.warning("the pivot references cache no %r embeddings (they have %s); the"
                    " reference side is embedded during training", encoder_name,
                    sorted(manifest.get("encoders", {})))
  elements, join_stats = pipeline_lib.join(source.targets, references,
                                           spec.data.missing_reference)
  logging.info("training prompts: %d joined (%s)", len(elements), join_stats)
  # Every host iterates the same global stream and holds the whole (small, text) batch: the
  # bucket shapes then agree across hosts, and a run gives the same batches on any number of
  # hosts. Device arrays are built from it slice by slice (distributed.global_from_host).
  loader = pipeline_lib.make_loader(elements, tokenizer, spec.pipeline)
  data_iter = iter(loader)
  eval_examples = []
  if run.eval_before_after or run.eval_every:
    for ds in spec.eval.datasets:
      eval_examples.extend(eval_lib.load_dataset(ds, workdir))

  # ============================== Shapes, shardings, train state =============================
  m_len = spec.rollout.max_new_tokens
  hp = spec.rl.update_hparams(spec.rollout.temperature, m_len, spec.prompt_group)
  updates_per_step = spec.rl.num_epochs * spec.rl.num_minibatches
  optimizer = spec.optim.make(run.total_steps * updates_per_step)
  # LoRA: the state holds adapters only; `ref_params` is then also the frozen base.
  lora = (lora_lib.LoraSpec(spec.model.lora_rank, spec.model.lora_alpha,
                            spec.model.lora_targets) if spec.model.lora_rank else None)
  state_fns = steps_lib.make_state_fns(model_cfg, optimizer, mesh, spec.rl.is_ppo, lora=lora)
  ref_params = distributed.global_from_host(host_params, state_fns.policy_shardings)
  del host_params
  base_key = jax.random.PRNGKey(run.seed)

  # ============================== Step functions ============================================
  # On-policy GRPO (one optimizer update per batch) takes the sampler's log-probs as the old
  # log-probs: same model code, so they agree up to rounding, and scoring skips a forward.
  on_policy = (not spec.rl.is_ppo and not spec.rl.is_sft and spec.rl.num_epochs == 1
               and spec.rl.num_minibatches == 1 and spec.rollout.top_k == 0
               and spec.rollout.top_p == 1.0)
  # The reward encoder runs in the same jit as the policy scoring, on the same mesh; its
  # parameters are replicated (USE-m3 is 30 MB). Host-side engines embed on the host.
  encoder = reward_models.encoder
  encoder_in_jit = (encoder is not None and encoder.params is not None
                    and not spec.rl.is_sft)  # SFT scores nothing
  embed_fn = None
  if encoder_in_jit:
    enc_params = distributed.global_from_host(encoder.params, shd.replicated(mesh))

    def embed_fn(params, enc_batch):  # leaves [BG, S, ...] -> embeddings [BG, S, E]
      rows, segs = jax.tree.leaves(enc_batch)[0].shape[:2]
      flat = jax.tree.map(lambda x: x.reshape((rows * segs,) + x.shape[2:]), enc_batch)
      return encoder.embed(params, flat).reshape(rows, segs, -1)

  score_fn = steps_lib.make_score_fn(model_cfg, mesh,
                                     params_shardings=state_fns.shardings.params,
                                     temperature=spec.rollout.temperature,
                                     embed_fn=embed_fn, policy_outputs=not on_policy,
                                     lora=lora, ref_shardings=state_fns.policy_shardings,
                                     prompt_group=spec.prompt_group)
  hook = None
  if run.debug_nonfinite_at_step >= 0:
    poison_from = run.debug_nonfinite_at_step
    poison_to = poison_from + run.debug_nonfinite_count
    hook = lambda step: (step >= poison_from) & (step < poison_to)
  update_fn = steps_lib.make_update_fn(model_cfg, hp, optimizer, mesh, state_fns.shardings,
                                       nonfinite_hook=hook, lora=lora,
                                       base_shardings=state_fns.policy_shardings)
  update_extra = (ref_params,) if lora is not None else ()  # the frozen base, with LoRA

  def policy() -> tuple[Any, Any, float]:
    """(decoder params, adapters or None, LoRA scale) the policy samples with.

    With LoRA the base is the reference's params and the adapters ride along unmerged.
    """
    if lora is None:
      return state.params["policy"], None, 1.0
    return ref_params, state.params["lora"], lora.alpha / lora.rank

  advantage_fn = make_advantage_fn(spec)
  stop_ids = [tokenizer.encode(s, add_special_tokens=False) for s in spec.rollout.stop_strings]
  batch_sh = shd.batch_sharding(mesh, 1)

  # ============================== Restore ===================================================
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"),
                                  max_to_keep=run.keep_checkpoints,
                                  async_save=run.async_checkpoint)
  abstract_state = ckpt_lib.abstract_with_shardings(
      jax.eval_shape(state_fns.from_params, ref_params, base_key), state_fns.shardings)
  restored = ckpt_lib.restore_latest(manager, abstract_state)
  if restored is not None:
    state = restored.state
    data_iter.set_state(restored.data_state.encode())
    start_step = restored.step
    logging.info("resumed from step %d", start_step)
  else:
    state = state_fns.from_params(ref_params, jax.random.fold_in(base_key, 1))
    start_step = 0

  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
  stop = _StopFlag()
  stop.install()

  def evaluate(tag: str) -> dict[str, Any]:
    params, adapters, scale = policy()
    result = eval_lib.evaluate(
        params, model_cfg, tokenizer, eval_examples,
        max_new_tokens=spec.eval.max_new_tokens, batch_size=spec.eval.batch_size,
        trained_langs=tuple(spec.data.langs), seed=spec.eval.seed, mesh=mesh, lora=adapters,
        lora_scale=scale)
    if jax.process_index() == 0:
      _write_json_atomic(os.path.join(workdir, f"eval_{tag}.json"), result)
    return result

  if start_step == 0 and run.eval_before_after and eval_examples:
    evaluate("before")

  # ============================== Loop ======================================================
  import psutil  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  process_info = psutil.Process()
  progress = tqdm(total=run.total_steps, initial=start_step, desc="train", unit="step",
                  disable=jax.process_index() != 0, dynamic_ncols=True)
  stopped_by = "total_steps"
  step = start_step
  timer = metrics_lib.StepTimer()
  try:
    while step < run.total_steps:
      step += 1
      step_start = time.perf_counter()
      timer.start("data")
      batch = next(data_iter)
      timer.stop("data")

      # --- rollout -------------------------------------------------------------------------
      timer.start("rollout")
      if spec.rl.is_sft:
        rollout = _reference_rollout(batch, tokenizer, model_cfg, m_len)
      else:
        rollout = _run_rollout(*policy(), model_cfg, batch,
                               jax.random.fold_in(base_key, 2 * step), spec, mesh, tokenizer,
                               stop_ids)
      timer.stop("rollout")

      # --- host text work: split responses, tokens for the reward encoder ---------------
      timer.start("host_text")
      langs = [batch["langs"][i // g] for i in range(len(rollout.texts))]
      dev_batch = {"tokens": rollout.tokens, "valid": rollout.valid,
                   "completion_mask": rollout.completion_mask}
      if encoder_in_jit:
        segments = [score_lib.segments(t, lang) for t, lang in zip(rollout.texts, langs)]
        dev_batch["enc_batch"] = _encoder_batch(encoder, segments, score_lib.SEGMENTS)
      dev_batch = distributed.global_from_host(dev_batch, batch_sh)
      timer.stop("host_text")

      # --- scoring (one jit, dispatched without waiting): reference (and policy) log-probs,
      # values, policy-side embeddings --------------------------------------------------------
      timer.start("scoring")
      if encoder_in_jit:
        scored = score_fn(state.params, ref_params, dev_batch, enc_params)
      else:
        scored = score_fn(state.params, ref_params, dev_batch)
      timer.stop("scoring")

      # --- host text rewards while the devices score: final answers, guards, translations -
      timer.start("host_text")
      if spec.rl.is_sft:
        items, rows = [], []  # nothing is sampled, nothing is scored
      else:
        items = _reward_items(batch, rollout.texts, g, encoder_name)
        rows = score_lib.text_scores(spec.reward, reward_models, items)
      timer.stop("host_text")

      timer.start("scoring")  # what is left of the device work once the host is done
      if encoder_in_jit:
        policy_emb = embed_long_segments_on_host(
            encoder, segments, score_lib.SEGMENTS,
            np.asarray(distributed.host_value(scored["embeddings"])))  # [BG, S, E]
      jax.block_until_ready(scored)
      timer.stop("scoring")

      # --- rewards: similarity to the cached pivot embeddings, the reward of the kind -------
      timer.start("reward")
      if spec.rl.is_sft:
        rewards = np.zeros((len(rollout.texts),), np.float32)
      else:
        if encoder_in_jit:
          for item, emb in zip(items, policy_emb):
            item["response_embeddings"] = dict(zip(score_lib.SEGMENTS, emb))
        rows = score_lib.finish_scores(spec.reward, reward_models, items, rows)
        rewards = np.asarray([r["reward"] for r in rows], np.float32)
      # Shaping terms join the reward the advantages see; `reward_mean` stays the reward.
      overlong = np.asarray(shaping.overlong_penalty(
          rollout.lengths, spec.rollout.max_new_tokens, spec.rl.overlong_buffer,
          spec.rl.overlong_penalty))
      shaped = rewards + overlong
      timer.stop("reward")

      # --- advantages --------------------------------------------------------------------
      upd = {k: dev_batch[k] for k in ("tokens", "valid", "completion_mask")}
      if spec.rl.mask_truncated and not spec.rl.is_sft:
        upd["completion_mask"] = distributed.global_from_host(
            np.asarray(shaping.mask_truncated(rollout.completion_mask, rollout.finished)),
            batch_sh)
      old_logp = (distributed.global_from_host(rollout.sampler_logp * rollout.completion_mask,
                                               batch_sh)
                  if on_policy else scored["logp"])
      upd["old_logp"] = old_logp
      upd["ref_logp"] = scored["ref_logp"]
      upd["advantages"], returns = advantage_fn(
          distributed.global_from_host(shaped, batch_sh), dev_batch["completion_mask"],
          old_logp, scored["ref_logp"], scored.get("values"))
      if spec.rl.is_ppo:
        upd["returns"] = returns
        upd["old_values"] = scored["values"]

      # --- update ------------------------------------------------------------------------
      timer.start("update")
      state, upd_metrics = update_fn(state, jax.device_put(upd, batch_sh), *update_extra)
      upd_metrics = distributed.host_value(upd_metrics)
      timer.stop("update")

      # --- metrics -----------------------------------------------------------------------
      record = {k: float(v) for k, v in upd_metrics.items()}
      if spec.rl.is_sft:
        # The update's own loss is -1 by construction (unit advantages at ratio 1); the SFT
        # loss is the reference tokens' NLL under the policy before this update.
        logp = np.asarray(distributed.host_value(scored["logp"]))
        record["loss"] = record["sft/nll"] = float(
            -np.sum(logp * rollout.completion_mask) / max(rollout.completion_mask.sum(), 1))
        record["rollout/mean_length"] = float(np.mean(rollout.lengths))
      else:
        record.update(_reward_record(rows, rewards, shaped, overlong, rollout, langs, g,
                                     spec.rl.overlong_buffer > 0))
        if spec.rl.mask_truncated:  # rows the update left out (DAPO's overlong filtering)
          record["rollout/loss_masked_frac"] = float(np.mean(~rollout.finished))
      record.update(timer.pop())
      record["time/step"] = time.perf_counter() - step_start
      # Resident host memory: a leak shows up here long before a multi-day run is killed.
      # Like time/*, it differs between otherwise identical runs.
      record["host/rss_mb"] = process_info.memory_info().rss / 2**20
      writer.write(step, record)
      if rows:
        writer.write_samples(step, _sample_records(rows, rollout, langs, g))
      if run.sample_every and step % run.sample_every == 0 and rows:
        sample_text = "\n\n".join(
            f"[{langs[i]}] reward={rows[i]['reward']:.3f}\n{rollout.texts[i][:600]}"
            for i in range(0, len(rows), g))
        writer.write_text(step, "samples", sample_text)
      progress.set_postfix(reward=f"{record.get('reward_mean', math.nan):.3f}",
                           loss=f"{record['loss']:.3f}", kl=f"{record['kl']:.4f}",
                           refresh=False)
      progress.update(1)

      if run.eval_every and step % run.eval_every == 0 and eval_examples:
        evaluate(f"step{step}")

      # --- stop conditions and checkpoint ------------------------------------------------
      if steps_lib.should_stop(state, run.max_nonfinite_in_row):
        stopped_by = "nonfinite"
        raise FloatingPointError(
            f"step {step}: {run.max_nonfinite_in_row} updates in a row had a non-finite loss"
            " or gradient and were skipped; stopping. The last checkpoint holds the last good"
            " state.")
      last = step == run.total_steps
      # A signal may reach some workers only: every host must leave at the same step.
      stopping = distributed.any_host(stop.signal is not None)
      if step % run.checkpoint_every == 0 or last or stopping:
        timer.start("checkpoint")
        ckpt_lib.save(manager, step, state, data_iter.get_state().decode(),
                      {"step": step, "time": time.time()})
        timer.stop("checkpoint")
      if stopping:
        stopped_by = f"signal {stop.signal}" if stop.signal is not None else "signal (peer)"
        break
  finally:
    progress.close()
    ckpt_lib.wait(manager)
    writer.close()
    stop.restore()
    manager.close()

  if stopped_by == "total_steps" and run.eval_before_after and eval_examples:
    evaluate("after")
  return {"last_step": step, "stopped_by": stopped_by, "workdir": workdir}


def train_and_report(config: Any, workdir: str) -> dict[str, Any]:
  """`train`, then the run report (process 0)."""
  from pbrl_jax import report  # pylint: disable=g-import-not-at-top
  summary = train(config, workdir)
  if jax.process_index() == 0:
    path = report.write_report(workdir)
    logging.info("report: %s", path)
    summary["report"] = path
  return summary
