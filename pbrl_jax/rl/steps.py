"""Train state, the jitted scoring step and the jitted update step (GRPO and PPO).

Axis letters: B sequences, P prompt tokens (left-padded), M completion tokens (right-padded),
T = P + M, V vocab, D model dim, E encoder embedding dim.

The train state is a plain pytree (`TrainState`); reference parameters live outside it, are
never donated and never differentiated. With LoRA (`lora: LoraSpec`), the state's trainable
params are {'lora': adapters[, 'value_head']}; the frozen base decoder is passed to each step
next to the state, and it is also the reference (the base without adapters), so the weights
are held once. The policy runs the base with the adapters unmerged (x W + s (x A) B inside
each projection, `decoder.forward(..., lora=...)`), so no merged copy of the weights is ever
built. Both steps are `jax.jit`s with explicit
`NamedSharding`s on the ('data', 'fsdp', 'tensor') mesh. Shapes come first: `jax.eval_shape`
of the init gives the state's structure, the sharding tree is built from it, and the init is
jitted with those `out_shardings`, so no full model is ever materialised on one host.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pbrl_jax.models import decoder
from pbrl_jax.models import lora as lora_lib
from pbrl_jax.models import sharding as shd
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.rl import kl as kl_lib
from pbrl_jax.rl import losses

Array = jax.Array
Params = Any
Batch = dict[str, Array]
EmbedFn = Callable[[Params, Any], Array]


@flax.struct.dataclass
class TrainState:
  """Everything the update donates and returns.

  Attributes:
    step: int32, update() calls so far (each may hold several optimizer updates).
    params: {'policy': decoder params} (or, with LoRA, {'lora': adapters}) plus
      {'value_head': ...} for PPO.
    opt_state: optax state of `params`.
    rng: PRNG key for minibatch shuffling.
    nonfinite_consecutive: int32, optimizer updates skipped in a row for a non-finite loss or
      gradient (reset by a finite one).
    nonfinite_total: int32, optimizer updates skipped in total.
  """

  step: Array
  params: dict[str, Params]
  opt_state: optax.OptState
  rng: Array
  nonfinite_consecutive: Array
  nonfinite_total: Array


@dataclasses.dataclass(frozen=True)
class UpdateHParams:
  """Static hyperparameters of the update step (validated once by the trainer).

  The defaults serve direct library callers; a trainer run sets every field from its config
  (`RLSpec.update_hparams`).

  Attributes:
    policy_loss: the per-token policy term (`losses.PolicyLoss`: clip, cispo, sapo, vespo).
    importance_level: token or sequence (GSPO) importance weights.
    eps_low: lower clip range of the ratio.
    eps_high: upper clip range ("clip-higher"); CISPO's bound on the weight.
    sapo_tau_pos, sapo_tau_neg: SAPO's gate temperatures for A > 0 and A <= 0.
    vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: VESPO's Gamma weight
      parameters for A >= 0 and A < 0 (`losses.vespo_surrogate`).
    dual_clip: dual-clip constant (> 1) or None.
    aggregation: how per-token policy losses are reduced.
    max_completion_length: the Dr.GRPO constant; None uses M.
    kl_estimator: estimator of the KL term in the loss (and of the logged KL).
    kl_coef_in_loss: beta of the KL term in the loss (0: no reference term in the loss).
    kl_clamp: optional (lo, hi) clamp of the per-token KL estimate.
    kl_ratio_correction: multiply the per-token KL of the loss by the (differentiable)
      ratio rho_t, which makes its gradient the unbiased reverse-KL gradient off-policy
      (DeepSeek-V3.2, arXiv 2512.02556); TRL 1.16's `use_bias_correction_kl`, on there by
      default.
    entropy_coef: coefficient of the token-mean entropy bonus (subtracted).
    top_entropy_quantile: rho in (0, 1]: the policy term keeps only the tokens in the top
      rho of each micro-batch's entropies (`losses.entropy_quantile_mask`); 1: every token.
    value_coef: coefficient of the token-mean value loss (PPO).
    value_clip: clip range of the value loss, or None.
    temperature: logits are divided by it before log-softmax (as at sampling).
    num_epochs: passes over the batch per update() call.
    num_minibatches: optimizer updates per epoch.
    num_microbatches: gradient-accumulation chunks per minibatch.
    shuffle: permute rows before splitting into minibatches, every epoch.
    with_value_head: PPO (a value head on the policy trunk) or GRPO (none).
    prompt_group: G when rows i*G .. i*G+G-1 share their prompt (GRPO's groups): the prompt
      is run once per group (`completion_outputs`), and minibatches and micro-batches hold
      whole groups. 1: every row on its own.
    ratio_to_self: the old log-probs are the update's own (stop-gradient), so every ratio is
      exactly 1 and the batch's `old_logp` is not read; the metrics add `nll`, the token mean
      of -log p before the update. SFT: its reference completions were never sampled, and
      with unit advantages the gradient is then exactly the NLL's, with no scoring forward.
  """

  policy_loss: losses.PolicyLoss = losses.PolicyLoss.CLIP
  importance_level: losses.ImportanceLevel = losses.ImportanceLevel.TOKEN
  eps_low: float = 0.2
  eps_high: float = 0.2
  sapo_tau_pos: float = 1.0
  sapo_tau_neg: float = 1.05
  vespo_k_pos: float = 2.0
  vespo_lambda_pos: float = 3.0
  vespo_k_neg: float = 3.0
  vespo_lambda_neg: float = 2.0
  dual_clip: float | None = None
  aggregation: losses.Aggregation = losses.Aggregation.TOKEN_MEAN
  max_completion_length: int | None = None
  kl_estimator: kl_lib.KLEstimator = kl_lib.KLEstimator.K3
  kl_coef_in_loss: float = 0.0
  kl_clamp: tuple[float, float] | None = None
  kl_ratio_correction: bool = False
  entropy_coef: float = 0.0
  top_entropy_quantile: float = 1.0
  value_coef: float = 0.1
  value_clip: float | None = 0.2
  temperature: float = 1.0
  num_epochs: int = 1
  num_minibatches: int = 1
  num_microbatches: int = 1
  shuffle: bool = False
  with_value_head: bool = False
  prompt_group: int = 1
  ratio_to_self: bool = False


# ---------------------------------------------------------------------------------------------
# Model outputs on completion tokens.
# ---------------------------------------------------------------------------------------------


def policy_params(params: dict[str, Params], base: Params | None,
                  lora: lora_lib.LoraSpec | None) -> Params:
  """The decoder params the policy runs with: params['policy'], or with LoRA the frozen base
  merged with params['lora']."""
  if lora is None:
    return params["policy"]
  return lora_lib.apply_lora(base, params["lora"], lora.alpha, lora.rank)


def completion_outputs(params: dict[str, Params], config: DecoderConfig, tokens: Array,
                       valid: Array, completion_len: int, temperature: float,
                       base: Params | None = None, lora: lora_lib.LoraSpec | None = None,
                       prompt_group: int = 1) -> tuple[Array, Array, Array | None]:
  """Per-token log-probs, entropies and values (if a value head is present) of completions.

  The hidden state at position t predicts token t+1, so the M completion tokens are scored
  by the hidden states at positions P-1 .. T-2; the value of the state before emitting a
  token comes from the same position (TRL's old PPOTrainer convention).

  With `prompt_group` G > 1, rows i*G .. i*G+G-1 must share their prompt (tokens and valid of
  the first P = T - M positions, as GRPO's groups do). The prompt then runs once per group,
  and each row's completion attends to its group's prompt keys and values: the same
  attention, masks and positions as one pass over [B,T] (equal up to float rounding), with
  the prompt's share of the FLOPs and activations divided by G.

  Args:
    params: {'policy': ..., optional 'value_head': ...}, or {'lora': ..., ...} with `lora`.
    config: decoder architecture and dtype policy.
    tokens: [B,T] prompt (left-padded) then completion (right-padded).
    valid: [B,T] 1 for real tokens.
    completion_len: M.
    temperature: sampling temperature.
    base: the frozen base decoder params (LoRA only).
    lora: LoRA settings, or None for full fine-tuning.
    prompt_group: G, rows per shared prompt (B must be a multiple of it).

  Returns:
    (logp [B,M] float32, entropy [B,M] float32, values [B,M] float32 or None).
  """
  if lora is None:
    pol, adapters, scale = params["policy"], None, 1.0
  else:  # unmerged: the base is frozen, gradients reach the adapters only
    pol, adapters, scale = jax.lax.stop_gradient(base), params["lora"], lora.alpha / lora.rank
  if prompt_group > 1:
    h = _grouped_hidden(pol, config, tokens, valid, completion_len, prompt_group, adapters,
                        scale)
  else:
    hidden, _ = decoder.forward(pol, config, tokens, decoder.positions_from_mask(valid),
                                decoder.causal_mask(valid), lora=adapters, lora_scale=scale)
    h = hidden[:, -completion_len - 1:-1]  # [B,M,D]
  # Blockwise over the vocabulary when config.vocab_block asks: no [B,M,V] logits.
  logp, entropy = decoder.token_logp_entropy(pol, config, h, tokens[:, -completion_len:],
                                             temperature)
  values = None
  if "value_head" in params:
    values = decoder.ValueHead(config.hidden_size).apply({"params": params["value_head"]}, h)
  return logp, entropy, values


def _grouped_hidden(pol: Params, config: DecoderConfig, tokens: Array, valid: Array,
                    completion_len: int, g: int, adapters: Params | None, scale: float
                    ) -> Array:
  """Hidden states at positions P-1 .. T-2 [B,M,D], the prompt run once per group of g rows."""
  b, t = tokens.shape
  if b % g:
    raise ValueError(f"prompt_group {g} does not divide the batch of {b} rows")
  p = t - completion_len
  first = lambda x: x.reshape((b // g, g) + x.shape[1:])[:, 0]  # one row per group
  prompt_valid = first(valid[:, :p])
  prompt_h, kv = decoder.forward(pol, config, first(tokens[:, :p]),
                                 decoder.positions_from_mask(prompt_valid),
                                 decoder.causal_mask(prompt_valid), lora=adapters,
                                 lora_scale=scale, collect_kv=True)
  # The rows of the one-pass mask and positions that belong to the completion: the same
  # attention pattern over [prompt keys; completion keys]. Each group's prompt keys and
  # values serve its g rows as they are (`decoder.forward`'s shared prefix), not copied per
  # row: [L, B/g, P, K, H] stays the only copy.
  comp_h, _ = decoder.forward(pol, config, tokens[:, p:],
                              decoder.positions_from_mask(valid)[:, p:],
                              decoder.causal_mask(valid)[:, p:, :], lora=adapters,
                              lora_scale=scale, prefix=kv)
  return jnp.concatenate([jnp.repeat(prompt_h[:, -1:], g, axis=0), comp_h[:, :-1]], axis=1)


# ---------------------------------------------------------------------------------------------
# Shapes, shardings, init.
# ---------------------------------------------------------------------------------------------


def value_head_logical_axes(config: DecoderConfig) -> Params:
  abstract = jax.eval_shape(lambda: decoder.ValueHead(config.hidden_size).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 1, config.hidden_size))))
  return nn.get_partition_spec(abstract)["params"]


def init_value_head(config: DecoderConfig, rng: Array) -> Params:
  variables = decoder.ValueHead(config.hidden_size).init(
      rng, jnp.zeros((1, 1, config.hidden_size), jnp.float32))
  return nn.unbox(variables["params"])


def _build_state(policy: Params, rng: Array, config: DecoderConfig,
                 optimizer: optax.GradientTransformation, with_value_head: bool,
                 lora: lora_lib.LoraSpec | None = None) -> TrainState:
  if lora is None:
    params = {"policy": policy}
  else:  # the base (`policy`) stays outside the state
    rng, lora_rng = jax.random.split(rng)
    params = {"lora": lora_lib.init_lora(config, lora.targets, lora.rank, lora_rng)}
  rng, vh_rng = jax.random.split(rng)
  if with_value_head:
    params["value_head"] = init_value_head(config, vh_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=rng,
                    nonfinite_consecutive=jnp.zeros((), jnp.int32),
                    nonfinite_total=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class StateFns:
  """The jitted initialisers and the sharding tree of the train state.

  Attributes:
    shardings: TrainState of NamedSharding.
    policy_shardings: NamedSharding tree of the decoder params (also for the reference).
    init_random: rng -> TrainState with random policy params (tests, benchmarks); with
      LoRA, fresh adapters only.
    from_params: (policy_params, rng) -> TrainState; the input is not donated (it is
      usually also the reference). With LoRA the input is the base, which the state does not
      hold: the state gets fresh adapters (B = 0, so the policy starts as the base).
  """

  shardings: TrainState
  policy_shardings: Params
  init_random: Callable[[Array], TrainState]
  from_params: Callable[[Params, Array], TrainState]


def make_state_fns(config: DecoderConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                   with_value_head: bool, lora: lora_lib.LoraSpec | None = None) -> StateFns:
  """Shapes first (`jax.eval_shape`), then shardings, then the jitted initialisers.

  With `lora`, the state's params are {'lora': adapters[, 'value_head']} and
  `policy_shardings` is the sharding of the frozen base (which is also the reference).
  """
  policy_shapes = decoder.param_shapes(config)
  policy_sh = shd.param_shardings(decoder.param_logical_axes(config), policy_shapes, mesh)
  key_shape = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  abstract = jax.eval_shape(
      lambda p, r: _build_state(p, r, config, optimizer, with_value_head, lora), policy_shapes,
      key_shape)
  rep = shd.replicated(mesh)
  if lora is None:
    params_sh = {"policy": policy_sh}
  else:
    params_sh = {"lora": shd.param_shardings(
        lora_lib.lora_logical_axes(config, lora.targets, lora.rank), abstract.params["lora"],
        mesh)}
  if with_value_head:
    params_sh["value_head"] = shd.param_shardings(
        value_head_logical_axes(config), abstract.params["value_head"], mesh)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract.opt_state, params_sh,
                                 transform_non_params=lambda _: rep)
  shardings = TrainState(step=rep, params=params_sh, opt_state=opt_sh, rng=rep,
                         nonfinite_consecutive=rep, nonfinite_total=rep)

  def init_random(rng: Array) -> TrainState:
    model_rng, rng = jax.random.split(rng)
    policy = None if lora is not None else decoder.init_params(config, model_rng)
    return _build_state(policy, rng, config, optimizer, with_value_head, lora)

  def from_params(policy: Params, rng: Array) -> TrainState:
    return _build_state(policy, rng, config, optimizer, with_value_head, lora)

  return StateFns(
      shardings=shardings, policy_shardings=policy_sh,
      init_random=jax.jit(init_random, in_shardings=rep, out_shardings=shardings),
      from_params=jax.jit(from_params, in_shardings=(policy_sh, rep), out_shardings=shardings))


# ---------------------------------------------------------------------------------------------
# Scoring: policy and reference log-probs, values, reward-encoder similarity, one jit.
# ---------------------------------------------------------------------------------------------


def make_score_fn(config: DecoderConfig, mesh: Mesh, *, params_shardings: dict[str, Params],
                  temperature: float = 1.0, embed_fn: EmbedFn | None = None,
                  policy_outputs: bool = True, lora: lora_lib.LoraSpec | None = None,
                  ref_shardings: Params | None = None, prompt_group: int = 1,
                  reference_outputs: bool = True) -> Callable[..., dict[str, Array]]:
  """Builds `score(params, ref_params, batch[, enc_params]) -> dict` under one jit.

  Batch: tokens [B,T], valid [B,T], completion_mask [B,M]; with `embed_fn`, also
  enc_batch (any pytree with leading B).

  Returns a dict: ref_logp [B,M] (with `reference_outputs`); with `policy_outputs`, also logp
  and entropy [B,M] (zero on padding) and values [B,M] with a value head; with `embed_fn`: the
  policy-side embeddings (the reward compares them with the cached references on the host,
  `rewards.score`).

  `policy_outputs=False` skips the policy forward: on-policy GRPO with one optimizer update
  per batch can take the sampler's log-probs as old log-probs (the same model code, so they
  agree up to float rounding), which saves a third of the scoring FLOPs.
  `reference_outputs=False` skips the reference forward: nothing reads it when no KL term has
  a positive coefficient (`RLSpec.uses_reference`; SFT, or GRPO at beta 0). Without LoRA
  `ref_params` is then unread and may be None (`train.build` passes None, so full fine-tuning
  keeps no frozen copy of the policy on the devices).

  With `lora`, `ref_params` is the frozen base: the reference is the base as it is, the policy
  the base with `params['lora']` merged in; `ref_shardings` (the base's shardings) is then
  required, since `params_shardings` holds no 'policy' entry.

  `prompt_group` G > 1: rows i*G .. i*G+G-1 share their prompt, which both forwards then run
  once per group (`completion_outputs`).
  """
  if lora is not None and ref_shardings is None:
    raise ValueError("make_score_fn: LoRA needs ref_shardings (the base's shardings)")
  batch_sh = shd.batch_sharding(mesh, 1)  # prefix: leading axis of every leaf
  rep = shd.replicated(mesh)

  def score(params: dict[str, Params], ref_params: Params, batch: Batch,
            enc_params: Params | None = None) -> dict[str, Array]:
    m = batch["completion_mask"].astype(jnp.float32)
    completion_len = m.shape[1]
    out = {}
    with shd.axis_rules():
      if policy_outputs:
        logp, entropy, values = completion_outputs(params, config, batch["tokens"],
                                                   batch["valid"], completion_len, temperature,
                                                   ref_params, lora, prompt_group)
        out.update(logp=logp * m, entropy=entropy * m)
        if values is not None:
          out["values"] = values * m
      if reference_outputs:
        ref_logp, _, _ = completion_outputs({"policy": ref_params}, config, batch["tokens"],
                                            batch["valid"], completion_len, temperature,
                                            prompt_group=prompt_group)
        out["ref_logp"] = jax.lax.stop_gradient(ref_logp) * m
    if embed_fn is not None:
      emb = embed_fn(enc_params, batch["enc_batch"])
      out["embeddings"] = emb
    return out

  if not reference_outputs and lora is None:
    ref_sh = None  # unread: the caller may pass None and hold no reference copy at all
  else:
    ref_sh = params_shardings["policy"] if ref_shardings is None else ref_shardings
  in_sh = (params_shardings, ref_sh, batch_sh)
  if embed_fn is not None:
    in_sh = in_sh + (rep,)
  return jax.jit(score, in_shardings=in_sh, out_shardings=batch_sh)


# ---------------------------------------------------------------------------------------------
# Update: epochs x minibatches of optimizer updates, each accumulating micro-batch gradients.
# ---------------------------------------------------------------------------------------------


def _minibatch_indices(rng: Array, batch_size: int, hp: UpdateHParams) -> Array:
  """Row indices [E, num_minibatches, num_microbatches, micro] (strided splits, so every
  micro-batch draws rows from every data shard). With `hp.prompt_group` G, the splits (and
  the shuffle) are of whole groups, each kept as G consecutive rows."""
  n_mb, n_micro, g = hp.num_minibatches, hp.num_microbatches, hp.prompt_group
  if batch_size % g:
    raise ValueError(f"batch {batch_size} is not divisible by prompt_group {g}")
  units = batch_size // g
  if units % (n_mb * n_micro):
    what = f"batch {batch_size}" if g == 1 else f"{units} groups of {g} rows"
    raise ValueError(f"{what} is not divisible by num_minibatches * num_microbatches ="
                     f" {n_mb * n_micro}")
  micro = units // (n_mb * n_micro)
  if hp.shuffle:
    perms = jnp.stack([jax.random.permutation(k, units)
                       for k in jax.random.split(rng, hp.num_epochs)])
  else:
    perms = jnp.broadcast_to(jnp.arange(units), (hp.num_epochs, units))
  idx = jnp.transpose(perms.reshape(hp.num_epochs, micro, n_micro, n_mb), (0, 3, 2, 1))
  if g == 1:
    return idx
  rows = idx[..., None] * g + jnp.arange(g)  # group u -> rows u*g .. u*g+g-1
  return rows.reshape(idx.shape[:-1] + (micro * g,))


def make_loss_fn(config: DecoderConfig, hp: UpdateHParams,
                 lora: lora_lib.LoraSpec | None = None
                 ) -> Callable[..., tuple[Array, dict[str, Array]]]:
  """loss(params, micro_batch, denominators[, base]) -> (loss, metric sums).

  The loss of a micro-batch is  sum_policy / den_policy + value_coef sum_v / den_tok
  - entropy_coef sum_H / den_tok,  with denominators of the whole minibatch (computed from
  masks before the micro-batch loop), so summing micro-batch losses and gradients gives the
  minibatch loss and gradient exactly. The policy term is per token
  pg_t + kl_coef_in_loss * kl_t, aggregated by `hp.aggregation` (TRL adds beta * k3 the same
  way before aggregating). With `lora`, `params` holds the adapters and `base` (the frozen
  decoder, never differentiated) is required.
  """

  def loss_fn(params: dict[str, Params], mb: Batch, dens: dict[str, Array],
              base: Params | None = None) -> tuple[Array, dict[str, Array]]:
    m = mb["completion_mask"].astype(jnp.float32)
    with shd.axis_rules():
      logp, entropy, values = completion_outputs(params, config, mb["tokens"], mb["valid"],
                                                 m.shape[1], hp.temperature, base, lora,
                                                 hp.prompt_group)
    advantages = mb["advantages"]
    keep = None
    if hp.top_entropy_quantile < 1.0:
      keep = losses.entropy_quantile_mask(entropy, m, hp.top_entropy_quantile)
    old_logp = jax.lax.stop_gradient(logp) if hp.ratio_to_self else mb["old_logp"]
    policy_sum, _, t = losses.policy_objective(logp, old_logp, mb.get("ref_logp"),
                                               advantages, m, hp, keep,
                                               mb.get("rollout_weight"))
    t["entropy"] = entropy
    if values is not None:
      t["value_loss"], t["value_clip_frac"] = losses.clipped_value_loss(
          values, mb["old_values"], mb["returns"], hp.value_clip)
      t["values"] = values
    loss = policy_sum / dens["policy"]
    tok_sum = lambda x: jnp.sum(x * m)
    sums = {name: tok_sum(t[name]) for name in ("pg", "kl", "clip_low", "clip_high",
                                                "entropy", "ratio", "vespo_phi") if name in t}
    if hp.top_entropy_quantile < 1.0:
      sums["entropy_kept"] = tok_sum(keep)
    if hp.ratio_to_self:
      sums["nll"] = -tok_sum(logp)
    if hp.entropy_coef:
      loss = loss - hp.entropy_coef * sums["entropy"] / dens["tokens"]
    if "value_loss" in t:
      for name in ("value_loss", "value_clip_frac"):
        sums[name] = tok_sum(t[name])
      loss = loss + hp.value_coef * sums["value_loss"] / dens["tokens"]
      # Explained variance needs raw moments: sum V, sum R, sum (R-V), sum (R-V)^2, sum R^2.
      resid = mb["returns"] - t["values"]
      sums.update(ev_r=tok_sum(mb["returns"]), ev_r2=tok_sum(jnp.square(mb["returns"])),
                  ev_d=tok_sum(resid), ev_d2=tok_sum(jnp.square(resid)))
    sums["policy_loss"] = policy_sum
    return loss, sums

  return loss_fn


def accumulate_gradients(loss_fn: Callable[..., tuple[Array, dict[str, Array]]],
                         params: dict[str, Params], micro_batches: Batch,
                         dens: dict[str, Array], grad_hook: Callable[[Any], Any] | None = None
                         ) -> tuple[Array, Any, dict[str, Array]]:
  """Sums loss, gradients and metric sums over micro-batches [n_micro, micro, ...] by
  `lax.scan` (one compiled micro-batch body; activations of one micro-batch live at a time).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def body(carry: tuple[Array, Any, dict[str, Array]], mb: Batch):
    loss_acc, grad_acc, sums_acc = carry
    (loss, sums), grads = grad_fn(params, mb, dens)
    return (loss_acc + loss, jax.tree.map(jnp.add, grad_acc, grads),
            jax.tree.map(jnp.add, sums_acc, sums)), None

  first = jax.tree.map(lambda x: x[0], micro_batches)
  sums_shape = jax.eval_shape(lambda: loss_fn(params, first, dens)[1])
  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params),
           jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape))
  (loss, grads, sums), _ = jax.lax.scan(body, zeros, micro_batches)
  return loss, grads, sums


NonfiniteHook = Callable[[Array], Array]


def _sum_metrics(sums: dict[str, Array], dens: dict[str, Array], with_value_head: bool
                 ) -> dict[str, Array]:
  """Token means of one optimizer update's accumulated sums (and the policy loss)."""
  tok = dens["tokens"]
  metrics = {
      "policy_loss": sums["policy_loss"] / dens["policy"],
      "pg_loss_token_mean": sums["pg"] / tok,
      "entropy": sums["entropy"] / tok,
      "clip_frac_low": sums["clip_low"] / tok,
      "clip_frac_high": sums["clip_high"] / tok,
      "ratio_mean": sums["ratio"] / tok,
      "num_tokens": tok,
  }
  if "kl" in sums:  # absent when no reference forward was run
    metrics["kl"] = sums["kl"] / tok
  if "entropy_kept" in sums:
    metrics["entropy_mask_kept_frac"] = sums["entropy_kept"] / tok
  if "nll" in sums:  # `UpdateHParams.ratio_to_self` (SFT)
    metrics["nll"] = sums["nll"] / tok
  if "vespo_phi" in sums:  # VESPO's sequence weight phi(W), token-weighted
    metrics["vespo_phi_mean"] = sums["vespo_phi"] / tok
  if with_value_head:
    var_r = sums["ev_r2"] / tok - jnp.square(sums["ev_r"] / tok)
    var_d = sums["ev_d2"] / tok - jnp.square(sums["ev_d"] / tok)
    metrics.update(value_loss=sums["value_loss"] / tok,
                   value_clip_frac=sums["value_clip_frac"] / tok,
                   explained_variance=1.0 - var_d / jnp.maximum(var_r, 1e-12))
  return metrics


def make_update_fn(config: DecoderConfig, hp: UpdateHParams,
                   optimizer: optax.GradientTransformation, mesh: Mesh,
                   state_shardings: TrainState,
                   nonfinite_hook: NonfiniteHook | None = None,
                   lora: lora_lib.LoraSpec | None = None, base_shardings: Params | None = None
                   ) -> Callable[..., tuple[TrainState, dict[str, Array]]]:
  """Builds the jitted `update(state, batch) -> (state, metrics)`; `state` is donated.

  With `lora` it is `update(state, batch, base)`: the state's params are the adapters (and
  value head), `base` is the frozen decoder (sharded by `base_shardings`, never donated and
  never differentiated).

  Batch (leading B, split over ('data', 'fsdp')): tokens [B,T], valid [B,T],
  completion_mask [B,M], old_logp [B,M], ref_logp [B,M] (absent when no KL term reads
  it), advantages [B,M] (or [B]);
  PPO also returns [B,M] and old_values [B,M]; with a rollout correction, rollout_weight
  [B,M] (`losses.rollout_correction_weights`).

  Per call: `num_epochs` passes, each `num_minibatches` optimizer updates, each the sum of
  `num_microbatches` accumulated gradients. An optimizer update whose loss or gradient norm
  is not finite is skipped: params and optimizer state stay as they were, and the
  consecutive / total counters in the state go up (the trainer stops after a configured
  number in a row). `nonfinite_hook(step) -> bool` is a test hook that turns the gradient
  into NaN when it returns True (None, the default: never).

  Metrics are means over the call's optimizer updates of token means (kl, entropy,
  clip_frac_low/high, ratio_mean, value_loss, ...), plus grad_norm (before clipping),
  update_norm, param_norm, loss, the skip counters, and the token-level mean and std of the
  advantages (reward spread within groups: `advantages.group_spread_metrics`).
  """
  if lora is not None and base_shardings is None:
    raise ValueError("make_update_fn: LoRA needs base_shardings")
  loss_fn = make_loss_fn(config, hp, lora)
  batch_sh = shd.batch_sharding(mesh, 1)
  rep = shd.replicated(mesh)
  micro_spec = P(None, None, None, shd.BATCH_AXES)
  data_devices = mesh.shape["data"] * mesh.shape["fsdp"]

  def optimizer_update(base: Params | None,
                       carry: tuple[dict[str, Params], Any, Array, Array, Array],
                       mb_batch: Batch):
    params, opt_state, consecutive, total, step = carry
    m = mb_batch["completion_mask"].astype(jnp.float32)  # [n_micro, micro, M]
    flat_m = m.reshape(-1, m.shape[-1])
    dens = {
        "policy": jnp.maximum(losses.aggregation_denominator(
            flat_m, hp.aggregation, hp.max_completion_length), 1.0),
        "tokens": jnp.maximum(jnp.sum(flat_m), 1.0),
    }
    loss, grads, sums = accumulate_gradients(
        lambda p, mb, d: loss_fn(p, mb, d, base), params, mb_batch, dens)
    if nonfinite_hook is not None:
      poison = nonfinite_hook(step)
      grads = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, g), grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    params = keep(new_params, params)
    opt_state = keep(new_opt_state, opt_state)
    consecutive = jnp.where(finite, 0, consecutive + 1)
    total = total + jnp.where(finite, 0, 1)
    metrics = {
        **_sum_metrics(sums, dens, hp.with_value_head),
        "loss": loss,
        "grad_norm": grad_norm,
        "update_norm": jnp.where(finite, optax.global_norm(updates), 0.0),
        "param_norm": optax.global_norm(params),
        "skipped": 1.0 - finite.astype(jnp.float32),
    }
    return (params, opt_state, consecutive, total, step), metrics

  def update(state: TrainState, batch: Batch, base: Params | None = None
             ) -> tuple[TrainState, dict[str, Array]]:
    batch = dict(batch)
    m_len = batch["completion_mask"].shape[1]
    if batch["advantages"].ndim == 1:
      batch["advantages"] = jnp.broadcast_to(batch["advantages"][:, None],
                                             (batch["advantages"].shape[0], m_len))
    b = batch["tokens"].shape[0]
    rng, perm_rng = jax.random.split(state.rng)
    idx = _minibatch_indices(perm_rng, b, hp)  # [E, n_mb, n_micro, micro]
    split = jax.tree.map(lambda x: x[idx], batch)
    if idx.shape[-1] % data_devices == 0:  # keep every micro-batch spread over the data axes
      split = jax.tree.map(
          lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, micro_spec)), split)
    # Fold epochs into the minibatch axis: one scan over all optimizer updates.
    split = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), split)
    carry = (state.params, state.opt_state, state.nonfinite_consecutive,
             state.nonfinite_total, state.step)
    (params, opt_state, consecutive, total, _), metrics = jax.lax.scan(
        functools.partial(optimizer_update, base), carry, split)
    metrics = jax.tree.map(jnp.mean, metrics)
    cm = batch["completion_mask"].astype(jnp.float32)
    n_tok = jnp.maximum(jnp.sum(cm), 1.0)
    adv_mean = jnp.sum(batch["advantages"] * cm) / n_tok
    metrics["advantage_mean"] = adv_mean
    metrics["advantage_std"] = jnp.sqrt(
        jnp.sum(jnp.square(batch["advantages"] - adv_mean) * cm) / n_tok)
    metrics["nonfinite_consecutive"] = consecutive
    metrics["nonfinite_total"] = total
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                           nonfinite_consecutive=consecutive, nonfinite_total=total)
    return new_state, metrics

  if lora is not None:
    return jax.jit(update, in_shardings=(state_shardings, batch_sh, base_shardings),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,))
  return jax.jit(lambda state, batch: update(state, batch),
                 in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


def should_stop(state: TrainState, max_consecutive_nonfinite: int) -> bool:
  """True once `max_consecutive_nonfinite` optimizer updates in a row were skipped."""
  return int(jax.device_get(state.nonfinite_consecutive)) >= max_consecutive_nonfinite
