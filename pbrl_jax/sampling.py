"""Batched autoregressive sampling: one jitted prefill + `lax.while_loop` decode.

Axis letters (as in `pbrl_jax.models.decoder`): B prompts, G samples per prompt, P prompt
length (a bucket), M completion length (a bucket), S = P + M cache length, V vocab,
L layers, K kv heads, H head dim, W stop-sequence window, E eos ids.

Data flow of one call:
  1. Prompts are left-padded to a prompt bucket P, so every prompt's last token sits at P-1
     and every row writes its n-th completion token at cache slot P + n.
  2. Prefill runs the B prompts once into a KV cache preallocated to S = P + M slots. For
     GRPO the cache and the first-token logits are then repeated G times along the batch, so
     sample j of prompt i is row i*G + j and no prompt is prefilled twice.
  3. A `lax.while_loop` decodes one token per step for all B*G rows until every row has
     stopped (EOS id or stop token sequence) or `max_new_tokens` is reached. The cache is
     carried explicitly and written in place with `dynamic_update_slice`.

Every integer or float that may change from call to call (max_new_tokens, temperature, top-k,
top-p, the EOS ids, the stop sequences) is a traced array, so calls that share the static
shapes (B, P bucket, M bucket, G) share one compiled program.

Log-probabilities. Each step returns two numbers for the sampled token:
  * `logprobs`: log softmax(logits) at temperature 1, with no top-k/top-p filtering: the
    model's own distribution, which is what the trainer recomputes in a full forward pass
    (policy ratio and KL are defined on it).
  * `sample_logprobs`: the log-probability under the distribution that was actually sampled
    from (temperature-scaled, top-k then top-p filtered and renormalised); 0 for greedy
    decoding, whose distribution is a point mass.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pbrl_jax import distributed
from pbrl_jax.padding import bucket_length, left_pad
from pbrl_jax.models import decoder
from pbrl_jax.models import sharding as sharding_lib
from pbrl_jax.models.config import DecoderConfig

Array = jax.Array
Params = Any

# Static length buckets. A run compiles at most one program per (batch, prompt bucket,
# completion bucket, samples per prompt) it meets.
PROMPT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
COMPLETION_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

# Sentinels in the padded id tables. Real token ids are >= 0.
_WILDCARD = -1  # left padding of a stop sequence: matches anything
_NEVER = -2  # unused EOS / stop-sequence entries: matches nothing
_BEFORE_START = -3  # stop window content before any token was generated
_EOS_PAD_TO = 8
_STOP_ROWS_PAD_TO = 4
_STOP_WIDTH_PAD_TO = 8


# ---------------------------------------------------------------------------------------------
# Pytrees carried through the loop and returned.
# ---------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingKnobs:
  """Per-call sampling settings, all traced scalars (changing them never recompiles).

  Attributes:
    max_new_tokens: int32, 1 <= max_new_tokens <= M.
    temperature: float32; 0 means greedy.
    top_k: int32; 0 means no top-k filter.
    top_p: float32 in (0, 1]; 1 means no nucleus filter.
  """

  max_new_tokens: Array
  temperature: Array
  top_k: Array
  top_p: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingState:
  """The `while_loop` carry. Rows are B*G (sample j of prompt i is row i*G + j).

  Attributes:
    step: int32 scalar, index of the next completion token to emit.
    last_token: [BG] the token emitted at step-1 (fed to the model at this step).
    cache: KV cache (`decoder.Cache`, batch axis 1: BG rows).
    tokens: [BG,M] completion tokens (pad id after a row stops).
    logprobs: [BG,M] log-prob of each token under the unmodified model softmax.
    sample_logprobs: [BG,M] log-prob under the sampling distribution.
    valid: [BG,M] True for emitted tokens, including the one that stopped the row.
    done: [BG] the row emitted an EOS id or completed a stop sequence.
    window: [BG,W] the last W emitted tokens, for stop-sequence matching.
    rng: PRNG key of the call.
  """

  step: Array
  last_token: Array
  cache: decoder.Cache
  tokens: Array
  logprobs: Array
  sample_logprobs: Array
  valid: Array
  done: Array
  window: Array
  rng: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """Completions of one `sample` call; row i*G + j is sample j of prompt i.

  Attributes:
    tokens: [BG,M] int32, padded with the config's pad id after `lengths`.
    logprobs: [BG,M] float32, log softmax of the model's logits (temperature 1, unfiltered)
      at each token; 0 where not valid.
    sample_logprobs: [BG,M] float32, log-prob under the temperature/top-k/top-p distribution
      actually sampled from (0 for greedy); 0 where not valid.
    valid: [BG,M] bool, the generated tokens (the stopping EOS / stop sequence included).
    lengths: [BG] int32, number of valid tokens.
    finished: [BG] bool, stopped by an EOS id or a stop sequence (not by the length limit).
  """

  tokens: Array
  logprobs: Array
  sample_logprobs: Array
  valid: Array
  lengths: Array
  finished: Array


# ---------------------------------------------------------------------------------------------
# Buckets and host-side padding.
# ---------------------------------------------------------------------------------------------


def eos_ids(config: DecoderConfig, tokenizer: Any) -> list[int]:
  """The ids that end a completion: the model config's EOS and the tokenizer's (as TRL does).

  The one definition, used by the trainer's rollouts, evaluation, `generate_text` and
  pbrl-compare, so every path stops a completion on the same tokens.
  """
  eos = set(config.eos_token_ids)
  if getattr(tokenizer, "eos_token_id", None) is not None:
    eos.add(int(tokenizer.eos_token_id))
  if not eos:
    raise ValueError("neither the model config nor the tokenizer names an EOS token; "
                     "generation could never stop before max_new_tokens")
  return sorted(eos)


def eos_table(eos_ids: Sequence[int]) -> np.ndarray:
  """EOS ids as an int32 [E] table, padded to a multiple of 8 with a never-matching id."""
  ids = sorted(set(int(i) for i in eos_ids))
  if any(i < 0 for i in ids):
    raise ValueError(f"eos ids must be non-negative, got {ids}")
  size = max(_EOS_PAD_TO, -(-len(ids) // _EOS_PAD_TO) * _EOS_PAD_TO)
  table = np.full((size,), _NEVER, np.int32)
  table[:len(ids)] = ids
  return table


def stop_table(sequences: Sequence[Sequence[int]]) -> np.ndarray:
  """Stop token sequences as a right-aligned int32 [NS, W] table.

  Rows and width are padded up to multiples of 4 and 8 (so different stop lists share a
  program); left padding inside a row is a wildcard, unused rows never match.
  """
  seqs = [list(map(int, s)) for s in sequences]
  if any(len(s) == 0 for s in seqs):
    raise ValueError("stop sequences must be non-empty")
  if any(t < 0 for s in seqs for t in s):
    raise ValueError("stop sequence ids must be non-negative")
  width = max([len(s) for s in seqs] + [1])
  width = -(-width // _STOP_WIDTH_PAD_TO) * _STOP_WIDTH_PAD_TO
  rows = max(_STOP_ROWS_PAD_TO, -(-len(seqs) // _STOP_ROWS_PAD_TO) * _STOP_ROWS_PAD_TO)
  table = np.full((rows, width), _NEVER, np.int32)
  for i, s in enumerate(seqs):
    table[i, :] = _WILDCARD
    table[i, width - len(s):] = s
  return table


# ---------------------------------------------------------------------------------------------
# The model steps (pure; usable on their own, and tested against full recomputation).
# ---------------------------------------------------------------------------------------------


def prefill(params: Params, config: DecoderConfig, tokens: Array, valid: Array,
            cache_length: int, lora: Params | None = None, lora_scale: float = 1.0
            ) -> tuple[Array, decoder.Cache]:
  """Runs left-padded prompts into a fresh cache; returns next-token logits.

  Args:
    params: decoder parameters.
    config: architecture.
    tokens: [B,P] left-padded prompt ids.
    valid: [B,P] bool, True on real tokens (a suffix of each row).
    cache_length: S >= P, static.
    lora: LoRA adapters applied unmerged (`decoder.forward`), or None.
    lora_scale: alpha / rank.

  Returns:
    (float32 logits [B,V] for the first completion token, cache (`decoder.Cache`) with the
    prompt's keys/values in slots 0..P-1).
  """
  b, p = tokens.shape
  if cache_length < p:
    raise ValueError(f"cache_length {cache_length} is shorter than the prompt length {p}")
  valid = valid.astype(bool)
  positions = decoder.positions_from_mask(valid)  # [B,P]
  mask = jnp.pad(decoder.causal_mask(valid), ((0, 0), (0, 0), (0, cache_length - p)))  # [B,P,S]
  cache = decoder.init_cache(config, b, cache_length)
  hidden, cache = decoder.forward(params, config, tokens, positions, mask, cache,
                                  jnp.zeros((), jnp.int32), lora=lora, lora_scale=lora_scale)
  # Left padding puts every prompt's last token at P-1: unembed that position only.
  logits = decoder.unembed(params, config, hidden[:, -1:])[:, 0]  # [B,V]
  return logits, cache


def decode_step(params: Params, config: DecoderConfig, token: Array, position: Array,
                slot: Array, key_valid: Array, cache: decoder.Cache,
                lora: Params | None = None, lora_scale: float = 1.0, *,
                layers: tuple[Params, ...] | None = None,
                lora_layers: tuple[Params, ...] | None = None
                ) -> tuple[Array, decoder.Cache]:
  """Feeds one token per row, writing its key/value at cache `slot`.

  Args:
    params: decoder parameters.
    config: architecture.
    token: [B] ids.
    position: [B] RoPE positions of those tokens.
    slot: int32 scalar cache slot (the same for every row, thanks to left padding).
    key_valid: [B,S] bool, which cache slots (this one included) the token may attend to.
    cache: KV cache (`decoder.Cache`).
    lora: LoRA adapters applied unmerged, or None.
    lora_scale: alpha / rank.
    layers: the layers' weights one by one (`decoder.unstack_layers`); the layer loop then
      reads them (`decoder.forward_per_layer`) and `params['layers']` is not read.
    lora_layers: the adapters one by one, with `layers` (`lora` is then not read).

  Returns:
    (float32 logits [B,V] for the next token, updated cache).
  """
  if layers is None:
    hidden, cache = decoder.forward(params, config, token[:, None], position[:, None],
                                    key_valid[:, None, :], cache, slot, lora=lora,
                                    lora_scale=lora_scale)
  else:
    hidden, cache = decoder.forward_per_layer(params, layers, config, token[:, None],
                                              position[:, None], key_valid[:, None, :],
                                              cache, slot, lora_layers, lora_scale)
  return decoder.unembed(params, config, hidden)[:, 0], cache


# ---------------------------------------------------------------------------------------------
# Token choice.
# ---------------------------------------------------------------------------------------------


def filter_logits(logits: Array, top_k: Array, top_p: Array) -> Array:
  """Top-k then top-p (nucleus) filtering; removed entries become -inf.

  Follows the order of Hugging Face's logits warpers: keep the k largest, then, of those,
  the smallest prefix (in descending probability) whose renormalised mass reaches top_p; a
  token is kept when the mass of the tokens strictly ahead of it is < top_p, so the most
  likely token always survives. Entries tied with the last kept logit are kept too.

  Args:
    logits: [B,V] float32 (already divided by the temperature).
    top_k: int32 scalar; <= 0 disables.
    top_p: float32 scalar in (0, 1]; 1 disables.

  Returns:
    [B,V] float32 logits with filtered entries at -inf.
  """
  v = logits.shape[-1]
  desc = -jnp.sort(-logits, axis=-1)  # [B,V] descending
  rank = jnp.arange(v)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  in_k = rank[None, :] < k  # [1,V]
  probs = jax.nn.softmax(jnp.where(in_k, desc, -jnp.inf), axis=-1)
  mass_ahead = jnp.cumsum(probs, axis=-1) - probs
  keep = in_k & (mass_ahead < top_p)
  num_keep = jnp.maximum(jnp.sum(keep, axis=-1), 1)  # [B]
  threshold = jnp.take_along_axis(desc, (num_keep - 1)[:, None], axis=-1)  # [B,1]
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def choose_tokens(logits: Array, keys: Array, knobs: SamplingKnobs) -> tuple[Array, Array]:
  """Picks one token per row: greedy at temperature 0, else a filtered categorical draw.

  Args:
    logits: [B,V] float32 model logits.
    keys: [B] PRNG keys, one per row (so a row's draw does not depend on the batch).
    knobs: temperature / top_k / top_p.

  Returns:
    (tokens [B] int32, log-prob of each under the sampling distribution [B] float32).
  """

  def greedy(_):
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.zeros(logits.shape[:1])

  def draw(_):
    scaled = logits / jnp.maximum(knobs.temperature, 1e-6)
    # The sort behind top-k/top-p costs a pass over [B,V]; skip it when both are off.
    filtered = jax.lax.cond((knobs.top_k > 0) | (knobs.top_p < 1.0),
                            lambda x: filter_logits(x, knobs.top_k, knobs.top_p),
                            lambda x: x, scaled)
    tokens = jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
    logp = jax.nn.log_softmax(filtered, axis=-1)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]

  return jax.lax.cond(knobs.temperature > 0, draw, greedy, None)


def _row_keys(rng: Array, step: Array, rows: int) -> Array:
  step_key = jax.random.fold_in(rng, step)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, jnp.arange(rows))


def _stop_hit(window: Array, stop_seqs: Array) -> Array:
  """[BG,W] last tokens, [NS,W] right-aligned stop table -> [BG] some sequence just ended."""
  match = (stop_seqs[None] == _WILDCARD) | (window[:, None, :] == stop_seqs[None])  # [BG,NS,W]
  return jnp.any(jnp.all(match, axis=-1), axis=-1)


def _emit(state: SamplingState, logits: Array, knobs: SamplingKnobs, eos_ids: Array,
          stop_seqs: Array, pad_id: int) -> SamplingState:
  """Chooses and records the token of completion index `state.step` for every row."""
  t = state.step
  rows = logits.shape[0]
  token, sample_lp = choose_tokens(logits, _row_keys(state.rng, t, rows), knobs)
  model_lp = jax.nn.log_softmax(logits, axis=-1)
  model_lp = jnp.take_along_axis(model_lp, token[:, None], axis=-1)[:, 0]
  active = ~state.done  # [BG]
  token = jnp.where(active, token, pad_id)
  model_lp = jnp.where(active, model_lp, 0.0)
  sample_lp = jnp.where(active, sample_lp, 0.0)
  window = jnp.concatenate([state.window[:, 1:], token[:, None]], axis=1)
  stopped = jnp.any(token[:, None] == eos_ids[None, :], axis=-1) | _stop_hit(window, stop_seqs)
  put = lambda buf, col: jax.lax.dynamic_update_slice(buf, col[:, None].astype(buf.dtype), (0, t))
  return dataclasses.replace(
      state,
      step=t + 1,
      last_token=token,
      tokens=put(state.tokens, token),
      logprobs=put(state.logprobs, model_lp),
      sample_logprobs=put(state.sample_logprobs, sample_lp),
      valid=put(state.valid, active),
      done=state.done | (active & stopped),
      window=window,
  )


# ---------------------------------------------------------------------------------------------
# The program: prefill + while_loop under one jit.
# ---------------------------------------------------------------------------------------------


def _constrain_batch(x: Array, mesh: Mesh | None, axis: int) -> Array:
  """Splits `axis` over the mesh's batch axes when it divides evenly (else leaves it)."""
  if mesh is None:
    return x
  size = int(np.prod([mesh.shape[a] for a in sharding_lib.BATCH_AXES]))
  if x.shape[axis] % size:
    return x
  spec = [None] * x.ndim
  spec[axis] = sharding_lib.BATCH_AXES
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


@functools.partial(jax.jit, static_argnames=("config", "num_samples", "max_len", "mesh",
                                             "lora_scale", "per_layer"))
def _sample_program(params: Params, prompt_tokens: Array, prompt_valid: Array, rng: Array,
                    knobs: SamplingKnobs, eos_ids: Array, stop_seqs: Array,
                    lora: Params | None, *, config: DecoderConfig, num_samples: int,
                    max_len: int, mesh: Mesh | None, lora_scale: float,
                    per_layer: bool) -> SampleOutput:
  b, p = prompt_tokens.shape
  g, m = num_samples, max_len
  rows = b * g
  prompt_valid = prompt_valid.astype(bool)
  logits, cache = prefill(params, config, prompt_tokens, prompt_valid, p + m, lora, lora_scale)
  if g > 1:
    # Share each prompt's prefill across its G samples: row i*G + j <- prompt i.
    logits = jnp.repeat(logits, g, axis=0)  # [BG,V]
    cache = jax.tree.map(lambda x: jnp.repeat(x, g, axis=1), cache)  # batch axis 1: BG rows
    prompt_valid = jnp.repeat(prompt_valid, g, axis=0)  # [BG,P]
  cache = jax.tree.map(lambda x: _constrain_batch(x, mesh, 1), cache)
  prompt_len = jnp.sum(prompt_valid, axis=-1, dtype=jnp.int32)  # [BG]

  state = SamplingState(
      step=jnp.zeros((), jnp.int32),
      last_token=jnp.full((rows,), config.pad_token_id, jnp.int32),
      cache=cache,
      tokens=jnp.full((rows, m), config.pad_token_id, jnp.int32),
      logprobs=jnp.zeros((rows, m), jnp.float32),
      sample_logprobs=jnp.zeros((rows, m), jnp.float32),
      valid=jnp.zeros((rows, m), bool),
      done=jnp.zeros((rows,), bool),
      window=jnp.full((rows, stop_seqs.shape[1]), _BEFORE_START, jnp.int32),
      rng=rng,
  )
  emit = functools.partial(_emit, knobs=knobs, eos_ids=eos_ids, stop_seqs=stop_seqs,
                           pad_id=config.pad_token_id)
  state = emit(state, logits)

  # The decode loop's weights: the stack as it is, or (`per_layer`) each layer's weights
  # sliced out once here, so that no step slices the stack again.
  step_params, per_layer_weights = params, {}
  if per_layer:
    step_params = {k: v for k, v in params.items() if k != "layers"}
    per_layer_weights["layers"] = decoder.unstack_layers(params["layers"])
    if lora is not None:
      per_layer_weights["lora_layers"] = decoder.unstack_layers(lora["layers"])

  def cond(s: SamplingState) -> Array:
    return (s.step < knobs.max_new_tokens) & ~jnp.all(s.done)

  def body(s: SamplingState) -> SamplingState:
    t = s.step  # feed token t-1, written at slot P + t - 1
    key_valid = jnp.concatenate(
        [prompt_valid, jnp.broadcast_to(jnp.arange(m) < t, (rows, m))], axis=1)  # [BG,S]
    logits, new_cache = decode_step(step_params, config, s.last_token, prompt_len + t - 1,
                                    p + t - 1, key_valid, s.cache, lora, lora_scale,
                                    **per_layer_weights)
    return emit(dataclasses.replace(s, cache=new_cache), logits)

  state = jax.lax.while_loop(cond, body, state)
  out = SampleOutput(
      tokens=state.tokens, logprobs=state.logprobs, sample_logprobs=state.sample_logprobs,
      valid=state.valid, lengths=jnp.sum(state.valid, axis=-1, dtype=jnp.int32),
      finished=state.done)
  return jax.tree.map(lambda x: _constrain_batch(x, mesh, 0), out)


@functools.lru_cache(maxsize=16)
def _param_shardings(config: DecoderConfig, mesh: Mesh) -> Any:
  return sharding_lib.param_shardings(decoder.param_logical_axes(config),
                                      decoder.param_shapes(config), mesh)


def _check_left_padded(valid: Any) -> None:
  """Each row must be padding then real tokens, ending with a real token (or all padding)."""
  if isinstance(valid, jax.Array) and not valid.is_fully_addressable:
    return  # multi-host global array: the data pipeline owns this invariant
  v = np.asarray(valid).astype(bool)
  if v.ndim != 2:
    raise ValueError(f"prompt_valid must be [B,P], got shape {v.shape}")
  bad = np.any(v[:, :-1] & ~v[:, 1:], axis=1) | (v.any(axis=1) & ~v[:, -1])
  if bad.any():
    raise ValueError(f"prompts must be left-padded (padding first, last slot real); rows "
                     f"{np.flatnonzero(bad)[:8].tolist()} are not")


def sample(params: Params, config: DecoderConfig, prompt_tokens: Array, prompt_valid: Array,
           rng: Array, *, num_samples: int = 1, max_new_tokens: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           eos_ids: Sequence[int] | None = None,
           stop_token_sequences: Sequence[Sequence[int]] = (),
           max_len: int | None = None, prompt_buckets: Sequence[int] = PROMPT_BUCKETS,
           mesh: Mesh | None = None, lora: Params | None = None,
           lora_scale: float = 1.0, per_layer: bool | None = None) -> SampleOutput:
  """Samples `num_samples` completions per left-padded prompt.

  Args:
    params: decoder parameters (sharded by the model's logical rules when `mesh` is given).
    config: architecture; `config.pad_token_id` pads finished rows.
    prompt_tokens: [B,P] int ids, left-padded.
    prompt_valid: [B,P] bool/int, True on real tokens. P is padded up to a prompt bucket.
    rng: PRNG key; the same key and inputs give the same completions.
    num_samples: G completions per prompt; sample j of prompt i is row i*G + j.
    max_new_tokens: at most this many tokens per completion (a traced value).
    temperature: 0 for greedy decoding, else the softmax temperature (traced).
    top_k: keep the k most likely tokens; 0 disables (traced).
    top_p: nucleus mass in (0, 1]; 1 disables (traced).
    eos_ids: ids that stop a row; None means `config.eos_token_ids`.
    stop_token_sequences: token sequences that stop a row once generated.
    max_len: the static completion length M of the outputs; default: the completion bucket
      of `max_new_tokens`.
    prompt_buckets: allowed prompt lengths.
    mesh: when given, rows are split over ('data', 'fsdp') and params are placed by the
      model's logical axis rules.
    lora: LoRA adapters (`pbrl_jax.models.lora`), applied unmerged on top of `params` (the
      base): the adapted kernels are never materialised. None: `params` alone.
    lora_scale: alpha / rank of the adapters.
    per_layer: decode from each layer's weights sliced out of the stack once per call
      (`decoder.unstack_layers`) rather than from the stack at every step; it holds a second
      copy of the weights while sampling. None: on the CPU only, where slicing the stack
      inside the loop copies every layer's weights at every step (measured in
      benchmarks/RESULTS.md); elsewhere the stack is read as it is, one copy of the weights
      (the memory a pod's plan counts).

  Returns:
    SampleOutput with [B*G, M] arrays.
  """
  if prompt_tokens.ndim != 2 or prompt_tokens.shape != prompt_valid.shape:
    raise ValueError(f"prompt_tokens {prompt_tokens.shape} and prompt_valid "
                     f"{prompt_valid.shape} must both be [B,P]")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if max_len is None:
    max_len = bucket_length(max_new_tokens, COMPLETION_BUCKETS)
  if max_new_tokens > max_len:
    raise ValueError(f"max_new_tokens {max_new_tokens} exceeds max_len {max_len}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  _check_left_padded(prompt_valid)

  p = prompt_tokens.shape[1]
  p_bucket = bucket_length(p, prompt_buckets)
  if p + max_new_tokens > config.max_position_embeddings:
    # RoPE still runs there, but the model was never trained on such positions.
    logging.warning("prompt length %d + max_new_tokens %d exceeds max_position_embeddings %d",
                    p, max_new_tokens, config.max_position_embeddings)
  if p_bucket != p:
    prompt_tokens = jnp.pad(jnp.asarray(prompt_tokens), ((0, 0), (p_bucket - p, 0)),
                            constant_values=config.pad_token_id)
    prompt_valid = jnp.pad(jnp.asarray(prompt_valid), ((0, 0), (p_bucket - p, 0)))
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_valid = jnp.asarray(prompt_valid, bool)

  knobs = SamplingKnobs(
      max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32),
      temperature=jnp.asarray(temperature, jnp.float32),
      top_k=jnp.asarray(top_k, jnp.int32),
      top_p=jnp.asarray(top_p, jnp.float32))
  eos = eos_table(config.eos_token_ids if eos_ids is None else eos_ids)
  stops = stop_table(stop_token_sequences)
  if mesh is not None:
    params = jax.device_put(params, _param_shardings(config, mesh))
    batch_size = int(np.prod([mesh.shape[a] for a in sharding_lib.BATCH_AXES]))
    if prompt_tokens.shape[0] % batch_size == 0:
      # Each device takes its rows of the (host-replicated) prompts: also right on multi-host.
      prompt_tokens, prompt_valid = distributed.global_from_host(
          (prompt_tokens, prompt_valid), sharding_lib.batch_sharding(mesh, 2))
  if per_layer is None:
    per_layer = jax.default_backend() == "cpu"
  return _sample_program(params, prompt_tokens, prompt_valid, rng, knobs,
                         jnp.asarray(eos), jnp.asarray(stops), lora, config=config,
                         num_samples=num_samples, max_len=max_len, mesh=mesh,
                         lora_scale=float(lora_scale), per_layer=bool(per_layer))


# ---------------------------------------------------------------------------------------------
# Text in, text out.
# ---------------------------------------------------------------------------------------------


def encode_prompts(tokenizer: Any, prompts: Sequence[str], chat: bool = True
                   ) -> list[list[int]]:
  """Token ids of each prompt; with `chat`, wrapped as one user turn by the chat template.

  The chat template already writes the special tokens it needs, so the templated text is
  encoded without adding any more.
  """
  out = []
  for prompt in prompts:
    if chat:
      if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat=True but the tokenizer has no chat template; pass chat=False")
      text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                           add_generation_prompt=True, tokenize=False)
      out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    else:
      out.append(list(tokenizer(prompt)["input_ids"]))
  return out


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
  """Cuts `text` at the earliest occurrence of any stop string (which is removed)."""
  cut = len(text)
  for s in stop:
    i = text.find(s) if s else -1
    if i >= 0:
      cut = min(cut, i)
  return text[:cut]


def generate_text(bundle: Any, prompts: Sequence[str], max_new_tokens: int = 128,
                  temperature: float = 0.0, seed: int = 0, chat: bool = True, *,
                  top_k: int = 0, top_p: float = 1.0, stop: Sequence[str] = (),
                  mesh: Mesh | None = None) -> list[str]:
  """Generates one completion per prompt and decodes it.

  Args:
    bundle: a model bundle with `.config`, `.params` and `.tokenizer` (from
      `pbrl_jax.models.from_pretrained`).
    prompts: user messages (with `chat`) or raw text.
    max_new_tokens: completion length limit.
    temperature: 0 for greedy.
    seed: PRNG seed.
    chat: apply the tokenizer's chat template with a generation prompt.
    top_k: top-k filter (0 disables).
    top_p: nucleus filter (1 disables).
    stop: stop strings; generation stops on their token sequences and the text is cut at the
      first occurrence of any of them (also when the model spelled it with other tokens).
    mesh: optional device mesh.

  Returns:
    One decoded string per prompt, special tokens removed.
  """
  if isinstance(prompts, str):
    raise TypeError("prompts must be a list of strings, not one string")
  if not prompts:
    return []
  config, tokenizer = bundle.config, bundle.tokenizer
  ids = encode_prompts(tokenizer, prompts, chat=chat)
  p = bucket_length(max(len(x) for x in ids), PROMPT_BUCKETS)
  # Pad the batch to a power of two with empty rows: a bounded number of programs.
  rows = 1 << (len(ids) - 1).bit_length()
  tokens, valid = left_pad(ids + [[]] * (rows - len(ids)), p, config.pad_token_id)
  stop_seqs = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in stop if s]
  out = sample(bundle.params, config, tokens, valid, jax.random.PRNGKey(seed),
               max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
               top_p=top_p, eos_ids=eos_ids(config, tokenizer),
               stop_token_sequences=[s for s in stop_seqs if s], mesh=mesh)
  toks, lengths = distributed.host_value((out.tokens, out.lengths))
  texts = []
  for i in range(len(ids)):
    text = tokenizer.decode(toks[i, :lengths[i]].tolist(), skip_special_tokens=True)
    texts.append(truncate_at_stop(text, stop))
  return texts
