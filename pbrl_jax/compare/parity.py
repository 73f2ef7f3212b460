"""pbrl-compare, step parity: the same completions through TRL's compute_loss and our loss."""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax import rl
from pbrl_jax import stages
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.models.hf import hf_state_dict, load_hf_params

from pbrl_jax.compare.prompts import Prompt
from pbrl_jax.compare.jax_side import JaxSide, call_reward, prompt_batch
from pbrl_jax.compare.common import Array, PARITY_RTOL, RewardFunc


# ---------------------------------------------------------------------------------------------
# Step-level parity: the same completions through TRL's compute_loss and our loss.
# ---------------------------------------------------------------------------------------------


def rel_err(ours: Any, ref: Any) -> float:
  """max|ours - ref| / max|ref| (the repository's parity metric)."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  scale = np.abs(ref).max()
  return float(np.abs(ours - ref).max() / scale) if scale > 0 else float(np.abs(ours).max())


def _trl_inputs(batch: Mapping[str, Any], advantages: np.ndarray, ref_logp: np.ndarray,
                old_logp: np.ndarray | None, is_ratio: np.ndarray | None = None
                ) -> dict[str, Any]:
  import torch
  p = batch["prompt_len"]
  long = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)
  cm = batch["completion_mask"]
  inputs = {
      "prompt_ids": long(batch["tokens"][:, :p]), "prompt_mask": long(batch["valid"][:, :p]),
      "completion_ids": long(batch["tokens"][:, p:]), "completion_mask": long(cm),
      "advantages": torch.tensor(advantages, dtype=torch.float32),
      "num_items_in_batch": torch.tensor(float(cm.sum())),
      "ref_per_token_logps": torch.tensor(ref_logp, dtype=torch.float32),
  }
  if old_logp is not None:
    inputs["old_per_token_logps"] = torch.tensor(old_logp, dtype=torch.float32)
  if is_ratio is not None:  # the sampler-mismatch ratio, [B,T] or [B,1] per sequence
    inputs["importance_sampling_ratio"] = torch.tensor(is_ratio, dtype=torch.float32)
  return inputs


def _trl_logps(trainer: Any, model: Any, batch: Mapping[str, Any]) -> np.ndarray:
  import torch
  ids = torch.tensor(batch["tokens"], dtype=torch.long)
  mask = torch.tensor(batch["valid"], dtype=torch.long)
  m = batch["completion_mask"].shape[1]
  logps_fn = trainer._get_per_token_logps_and_entropies  # pylint: disable=protected-access
  with torch.no_grad():
    logp, _, _ = logps_fn(model, ids, mask, m)
  return logp.float().numpy() * batch["completion_mask"]


def _trl_loss_and_grads(trainer: Any, inputs: Mapping[str, Any], float64: bool = False
                        ) -> tuple[float, dict[str, np.ndarray]]:
  """TRL's `compute_loss` and `backward` on prepared inputs; grads as numpy (model dtype).

  With `float64`, the policy and the float inputs are cast to float64 for the call (and the
  policy back to float32 after: float32 -> float64 -> float32 is exact), giving a reference
  for how far each fp32 implementation is from the exact result.
  """
  import torch
  model = trainer.model
  model.train()
  model.zero_grad(set_to_none=True)
  trainer.current_gradient_accumulation_steps = 1
  inputs = dict(inputs)
  if float64:
    model.double()
    inputs = {k: v.double() if torch.is_floating_point(v) else v for k, v in inputs.items()}
  try:
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()
             if p.grad is not None}
  finally:
    model.zero_grad(set_to_none=True)
    if float64:
      model.float()
  return float(loss.detach()), grads


@functools.lru_cache(maxsize=None)
def _jax_loss_and_grad_fn(config: DecoderConfig, hp: rl.UpdateHParams) -> Callable[..., Any]:
  loss_fn = rl.make_loss_fn(config, hp)

  def loss_and_grad(params: Any, batch: Mapping[str, Array]) -> tuple[Array, Any]:
    m = batch["completion_mask"].astype(jnp.float32)
    dens = {"policy": jnp.maximum(rl.aggregation_denominator(
        m, hp.aggregation, hp.max_completion_length), 1.0), "tokens": jnp.maximum(m.sum(), 1.0)}
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, dens)
    return loss, grads

  return jax.jit(loss_and_grad)


@contextlib.contextmanager
def _trl_mismatch_correction(trainer: Any, on: bool):
  """TRL's loss applies `importance_sampling_ratio` only with vLLM generation; the loss code
  is the same without it, so the flags are switched on for the call and restored."""
  saved = trainer.use_vllm, trainer.vllm_importance_sampling_correction
  if on:
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
  try:
    yield
  finally:
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = saved


def _perturb_torch_model(model: Any, scale: float, seed: int) -> None:
  """Adds seeded Gaussian noise of `scale` times each tensor's std, in place."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(model.named_parameters()):
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
      p.add_((noise * scale * p.float().std().clamp(min=1e-3)).to(p.dtype))


# Seeded noise of the sampler's log-probs around the old ones in the probes of a preset with
# a sampler-mismatch correction (both sides sample in float32 here, so the real mismatch is
# rounding): std 0.2 per token moves a 16-token sequence's ratio by about e^0.8.
SAMPLER_NOISE = 0.2


def _rollout_weights(preset: Any, old: np.ndarray, mask: np.ndarray
                     ) -> tuple[np.ndarray, float] | None:
  """The correction's weights [B,T] for sampler log-probs = `old` + seeded noise (None when
  the preset has no correction), and the share of valid tokens they bound."""
  mode = preset.vllm_importance_sampling_mode
  if mode is None:
    return None
  noise = np.random.default_rng(preset.seed + 3).normal(size=old.shape).astype(np.float32)
  sampler = (old + SAMPLER_NOISE * noise) * mask
  weights, stats = rl.rollout_correction_weights(
      jnp.asarray(old), jnp.asarray(sampler), jnp.asarray(mask),
      rl.RolloutCorrection.parse(mode), preset.vllm_importance_sampling_clip_min,
      preset.vllm_importance_sampling_clip_max)
  return np.asarray(weights, np.float32), float(stats["mismatch/bounded_frac"])


def _probe(trainer: Any, side: JaxSide, policy_params: Any, batch: Mapping[str, Any],
           advantages: np.ndarray, old_noise: float) -> dict[str, float]:
  """TRL vs ours on one batch: log-probs, reference log-probs, loss and gradient.

  Both sides get identical reference and old log-probs (ours). With `old_noise` == 0 the old
  log-probs are omitted on TRL's side (its on-policy path: current log-probs, detached) and
  are our current log-probs on ours; otherwise they are the reference log-probs plus seeded
  N(0, old_noise^2) noise, so ratios leave the clip range. With a sampler-mismatch
  correction both losses get the same weights (`_rollout_weights`: TRL computes its ratio
  inline while generating, so it cannot compute them here; the weights themselves are
  checked against a NumPy loop in tests/rl): the probe checks how each loss applies them.
  """
  p = side.preset
  config = side.bundle.config
  m = batch["completion_mask"]
  mask = m.astype(bool)
  trl_logp = _trl_logps(trainer, trainer.model, batch)
  scored = side.policy_score({"policy": policy_params}, side.ref_params,
                             {k: batch[k] for k in ("tokens", "valid", "completion_mask")})
  ours_logp, ours_ref = (np.asarray(scored[k]) for k in ("logp", "ref_logp"))
  trl_ref = (_trl_logps(trainer, trainer.ref_model, batch)
             if trainer.ref_model is not None else None)
  if old_noise:
    noise = np.random.default_rng(p.seed + 2).normal(size=m.shape).astype(np.float32)
    old = (ours_ref + old_noise * noise) * m
  else:
    old = None
  jbatch = {"tokens": batch["tokens"], "valid": batch["valid"], "completion_mask": m,
            "old_logp": ours_logp if old is None else old, "ref_logp": ours_ref,
            "advantages": np.broadcast_to(advantages[:, None], m.shape).astype(np.float32)}
  correction = _rollout_weights(p, jbatch["old_logp"], m)
  is_ratio = None
  if correction is not None:
    weights, bounded = correction
    jbatch["rollout_weight"] = weights
    per_sequence = rl.RolloutCorrection.parse(p.vllm_importance_sampling_mode).per_sequence
    is_ratio = weights[:, :1] if per_sequence else weights
  inputs = _trl_inputs(batch, advantages, ours_ref, old, is_ratio)
  with _trl_mismatch_correction(trainer, correction is not None):
    trl_loss, trl_grads = _trl_loss_and_grads(trainer, inputs)
    exact_loss, exact_grads = _trl_loss_and_grads(trainer, inputs, float64=True)
  loss, grads = _jax_loss_and_grad_fn(config, side.update_hparams)(
      {"policy": policy_params}, jbatch)
  ours_grads = dict(hf_state_dict(jax.device_get(grads["policy"]), config))
  names = sorted(set(ours_grads) & set(trl_grads))
  # Tensor by tensor (no concatenated copies of a whole model's gradients in memory).
  stats = {k: 0.0 for k in ("max_trl", "max_exact", "d_ours_trl", "d_ours_exact",
                            "d_trl_exact", "sq_ours", "sq_trl", "sq_exact")}
  per_tensor = []
  for n in names:
    go, gt, ge = (np.asarray(g[n], np.float64) for g in (ours_grads, trl_grads, exact_grads))
    stats["max_trl"] = max(stats["max_trl"], float(np.abs(gt).max()))
    stats["max_exact"] = max(stats["max_exact"], float(np.abs(ge).max()))
    for key, a, b in (("d_ours_trl", go, gt), ("d_ours_exact", go, ge), ("d_trl_exact", gt, ge)):
      stats[key] = max(stats[key], float(np.abs(a - b).max()))
    for key, a in (("sq_ours", go), ("sq_trl", gt), ("sq_exact", ge)):
      stats[key] += float(np.sum(np.square(a)))
    per_tensor.append((rel_err(go, ge), rel_err(gt, ge), n))
  norm = {k: math.sqrt(stats[f"sq_{k}"]) for k in ("ours", "trl", "exact")}
  norm_err = lambda a, b: abs(norm[a] - norm[b]) / max(norm[b], 1e-30)
  ratio = np.exp(ours_logp - jbatch["old_logp"])[mask]
  x = (ours_ref - ours_logp)[mask]
  # The policy term of each sequence is about -A at ratio 1; group-centred advantages make
  # the loss itself nearly cancel, so its error is measured against that scale.
  loss_scale = max(abs(trl_loss), float(np.mean(np.abs(advantages))))
  out = {
      "loss_trl": trl_loss, "loss_ours": float(loss), "loss_fp64": exact_loss,
      "loss_rel_err": abs(float(loss) - trl_loss) / loss_scale,
      "loss_scale": loss_scale,
      "loss_rel_err_ours_vs_fp64": abs(float(loss) - exact_loss) / loss_scale,
      "loss_rel_err_trl_vs_fp64": abs(trl_loss - exact_loss) / loss_scale,
      "logp_rel_err": rel_err(ours_logp[mask], trl_logp[mask]),
      "grad_rel_err": stats["d_ours_trl"] / max(stats["max_trl"], 1e-30),
      "grad_norm_trl": norm["trl"], "grad_norm_ours": norm["ours"],
      "grad_norm_fp64": norm["exact"],
      "grad_norm_rel_err": norm_err("ours", "trl"),
      # Distance of each fp32 implementation from TRL's float64 result.
      "grad_rel_err_ours_vs_fp64": stats["d_ours_exact"] / max(stats["max_exact"], 1e-30),
      "grad_rel_err_trl_vs_fp64": stats["d_trl_exact"] / max(stats["max_exact"], 1e-30),
      "grad_norm_rel_err_ours_vs_fp64": norm_err("ours", "exact"),
      "grad_norm_rel_err_trl_vs_fp64": norm_err("trl", "exact"),
      "grad_tensors": len(names),
      "grad_tensors_unmatched": len(set(ours_grads) ^ set(trl_grads)),
      "kl_k3_mean": float(np.mean(np.exp(x) - x - 1.0)),
      "ratio_outside_clip_frac": float(np.mean((ratio < 1 - p.epsilon)
                                               | (ratio > 1 + p.epsilon_high))),
  }
  per_tensor.sort(reverse=True)
  out["grad_worst_tensors"] = [{"name": n, "ours_vs_fp64": a, "trl_vs_fp64": b}
                               for a, b, n in per_tensor[:5]]
  if trl_ref is not None:
    out["ref_logp_rel_err"] = rel_err(ours_ref[mask], trl_ref[mask])
  if correction is not None:
    out["rollout_bounded_frac"] = bounded  # the share of valid tokens the bounds moved
  return out


def step_parity(trainer: Any, side: JaxSide, prompts: Sequence[Prompt],
                reward_func: RewardFunc, perturb_scale: float = 0.05, old_noise: float = 0.3
                ) -> dict[str, Any]:
  """Feeds one set of sampled completions to both sides and compares the first update.

  Probe 'checkpoint': policy == reference, old log-probs = current (TRL's on-policy path).
  Probe 'perturbed': both policies get the same seeded weight noise (`perturb_scale` times
  each tensor's std), and the old log-probs are the reference's plus N(0, old_noise^2), so
  the KL term, the ratio and the clipping are all exercised.

  Advantages come from the reward callable; when every group's rewards are equal (all
  advantages 0, as for a random model) they come from seeded N(0,1) rewards instead, so the
  gradient is never vacuous. `advantages_source` says which.

  Returns:
    {'probes': {name: errors}, 'max_rel_err': ..., 'passed': bool, ...}.
  """
  p, fns = side.preset, side.fns
  config, g = fns.model_cfg, p.num_generations
  # The first training step's rollout (policy == reference, step 0's key) and shapes, so
  # the jitted functions are shared with the training loop.
  pb = prompt_batch(fns.tokenizer, prompts, g, fns.model_cfg.pad_token_id)
  rollout = stages.rollout_stage(fns, side.state, pb, 0)
  rewards = stages.external_rewards(fns, rollout,
                                    call_reward(reward_func, prompts, rollout.texts, g))
  source = "reward_func"
  if np.all(rewards.rewards.reshape(-1, g).std(1) == 0):
    rewards = stages.external_rewards(
        fns, rollout, np.random.default_rng(p.seed).normal(size=rewards.rewards.shape))
    source = "seeded_normal"
  scored = stages.score_stage(fns, side.state, pb, rollout)
  update_batch = stages.advantage_stage(fns, rollout, scored, rewards)
  # GRPO's advantages are one value per sequence, broadcast over its tokens.
  token_adv = np.asarray(update_batch.arrays["advantages"])
  first = np.argmax(rollout.completion_mask, axis=1)
  advantages = token_adv[np.arange(len(first)), first].astype(np.float32)
  # The update's completion mask (DAPO's overlong filtering drops truncated rows there; TRL
  # drops them from its completion_mask while generating): both sides get it.
  batch = {"tokens": rollout.tokens, "valid": rollout.valid,
           "completion_mask": np.asarray(update_batch.arrays["completion_mask"]),
           "prompt_len": pb.prompt_tokens.shape[1]}

  probes = {"checkpoint": _probe(trainer, side, side.ref_params, batch, advantages, 0.0)}

  # The perturbed policy: TRL's model in place (restored afterwards), ours via a safetensors
  # round trip of the same tensors.
  import torch
  model = trainer.model
  saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
  try:
    _perturb_torch_model(model, perturb_scale, p.seed)
    with tempfile.TemporaryDirectory(prefix="pbrl_compare_perturbed_") as tmp:
      model.save_pretrained(tmp, safe_serialization=True)
      perturbed = load_hf_params(tmp, config)
    perturbed = jax.device_put(perturbed, side.state_fns.policy_shardings)
    probes["perturbed"] = _probe(trainer, side, perturbed, batch, advantages, old_noise)
  finally:
    with torch.no_grad():
      model.load_state_dict(saved)
  trainer._metrics["train"].clear()  # pylint: disable=protected-access
  checks = {f"{name}/{k}": v for name, pr in probes.items()
            for k, v in parity_checks(pr, PARITY_RTOL).items()}
  max_err = max(pr[k] for pr in probes.values() for k in PARITY_KEYS if k in pr)
  return {"probes": probes, "advantages_source": source, "rtol": PARITY_RTOL,
          "rows": int(batch["tokens"].shape[0]), "prompt_group": int(fns.spec.prompt_group),
          "completion_tokens": int(batch["completion_mask"].sum()),
          "max_rel_err": max_err, "checks": checks,
          "passed": all(c["passed"] for c in checks.values())}


# The most a gradient may differ from TRL's (and from the float64 result), relative, even
# where TRL's own float32 rounding error exceeds the tolerance.
GRAD_ABS_LIMIT = 1e-3
PARITY_KEYS = ("loss_rel_err", "logp_rel_err", "ref_logp_rel_err", "grad_rel_err",
               "grad_norm_rel_err")


def parity_checks(probe: Mapping[str, float], rtol: float) -> dict[str, dict[str, Any]]:
  """Pass/fail of each error of one probe.

  Loss and log-probs: error to TRL (fp32) <= rtol. Gradient and gradient norm: error to TRL
  <= rtol, or, where float32 rounding alone moves TRL further than rtol from its own float64
  result (the gradient of a group-centred loss is a near-cancelling sum), our distance to that
  float64 result <= 2x TRL's, and never above GRAD_ABS_LIMIT whatever TRL's own error: a
  gradient 1e-3 away from the float64 result is a bug, not rounding.
  """
  out = {}
  for key in ("loss_rel_err", "logp_rel_err", "ref_logp_rel_err"):
    if key in probe:
      out[key] = {"value": probe[key], "bound": rtol, "passed": bool(probe[key] <= rtol)}
  for key in ("grad_rel_err", "grad_norm_rel_err"):
    base = key.removesuffix("_rel_err")
    ours, trl = probe[f"{base}_rel_err_ours_vs_fp64"], probe[f"{base}_rel_err_trl_vs_fp64"]
    ok = probe[key] <= rtol or (ours <= 2.0 * trl and probe[key] <= GRAD_ABS_LIMIT
                                and ours <= GRAD_ABS_LIMIT)
    out[key] = {"value": probe[key], "bound": rtol, "ours_vs_fp64": ours, "trl_vs_fp64": trl,
                "abs_limit": GRAD_ABS_LIMIT, "passed": bool(ok)}
  return out
