"""The decoder-only transformer family (Llama 3.x, Qwen2/2.5, Qwen3, SmolLM2) in Flax linen.

Axis letters used in einsum strings and shape comments:
  B batch, T query sequence, S key/cache sequence, L layers, D model dim, N query heads,
  K key/value heads, G query heads per kv head (N = K * G), H head dim, F ffw dim, V vocab,
  R LoRA rank, C rows that share one prefix (the completions of one prompt).

The layer stack is an `nn.scan`, so parameters carry a leading L axis and an 8B model compiles
one layer body. Every parameter has a logical axis name on every dimension
(`nn.with_logical_partitioning`); `pbrl_jax.models.sharding` maps them to a mesh.

The functions at the bottom (`init_params`, `forward`, `unembed`, `token_logprobs`,
`init_cache`) are what the sampler and the trainer call: parameters in and out as plain
pytrees, the KV cache passed in and returned explicitly.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pbrl_jax.models.config import DecoderConfig

Array = jax.Array
Params = Any  # nested dict of arrays
# The KV cache: keys and values [L,B,K,S,H], the layout both attention contractions read
# per (B,K): q.k as [S,H] rows against q's H, p.v as [S,H] against p's S. A decode step then
# reads the cache where it lies. Stored as [L,B,S,K,H], XLA on the CPU copied both of every
# layer's slices into these layouts at every step (SmolLM2-135M, 16 rows, 256 slots: 30 ms
# of a 86 ms step); keys stored [L,B,K,H,S] instead made XLA compute q.k with the cache as a
# left operand contracted on its major axis, outside its YNNPACK matmul fusions (a generic
# dot of 1 ms per layer and step). tests/sampling/test_decode_hlo.py checks the step.
Cache = dict[str, Array]

_NORMAL = nn.initializers.normal(stddev=0.02)


def rope_inv_freq(config: DecoderConfig) -> Array:
  """Inverse RoPE frequencies [H/2], including Llama-3.1's `llama3` scaling."""
  h = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  s = config.rope_scaling
  if s is None or s.rope_type == "default":
    return inv_freq
  if s.rope_type == "linear":
    return inv_freq / s.factor
  # llama3: leave high frequencies, divide low ones by `factor`, interpolate in between.
  old_len = s.original_max_position_embeddings
  low_wavelen = old_len / s.low_freq_factor
  high_wavelen = old_len / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def rope_sin_cos(config: DecoderConfig, positions: Array) -> tuple[Array, Array]:
  """sin and cos tables [B,T,H] for integer positions [B,T] (HF rotate-half layout)."""
  freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(config)  # [B,T,H/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B,T,H]
  return jnp.sin(emb), jnp.cos(emb)


def apply_rope(x: Array, sin: Array, cos: Array) -> Array:
  """Rotates x [B,T,N,H] by position; computed in float32, returned in x's dtype."""
  xf = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)


class RMSNorm(nn.Module):
  """RMSNorm computed in float32, scaled by a learned weight (HF Llama semantics)."""

  eps: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
        (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * xf.astype(self.dtype)


def _with_lora(module: nn.Module, name: str, y: Array, x: Array, dtype: Any,
               eqs: tuple[str, str], flatten: bool = False) -> Array:
  """y + ((x A) B) with the adapter of kernel `name` in the 'lora' collection, else y as is.

  The unmerged LoRA path: the adapted kernel W + s A B is never built, so LoRA adds no copy
  of the weights (the scale s is folded into B by `forward`). Without an adapter nothing is
  added (not even a zero: `y + 0.0` is an elementwise pass XLA may not fold away).

  `eqs`: the einsums of x A, then (x A) B. With `flatten` (the MLP's 2-D kernels) and a
  one-device mesh (or none), the products run instead as 2-D matmuls over the flattened
  rows. Why (XLA on the CPU, the demo's update, `benchmarks/update_step.py --profile`): from
  3-D einsums, the gradient of an MLP adapter's B contracts over (batch, time), and XLA
  recomputes the fusion in front of it with a transposed [F, B*T] output (2.5 s of a 17 s
  update); 2-D matmuls avoid it, with the same gradients (bit-identical in a standalone
  check), and the update ran 1.19x faster in an interleaved comparison. Flattening the
  attention adapters as well made it 13% slower, so they never flatten. On a sharded mesh
  the flattening is worse than slow: with one row per device, XLA's partitioner reshards the
  flattened rows over (batch, time), all-reducing and all-gathering [B, T, D] and [B, T, F]
  activations across devices in every layer (the Llama-3.1-8B LoRA update on 256 devices
  moved 1.8 GiB per device and layer; `tests/scale/test_plan.py` checks that no MLP
  collective moves activations), so there the einsums keep the batch's layout.
  """
  if not module.has_variable("lora", name):
    return y
  adapter = module.get_variable("lora", name)
  a, b = adapter["a"].astype(dtype), adapter["b"].astype(dtype)
  if flatten and _one_device():
    return y + ((x.reshape((-1, x.shape[-1])) @ a) @ b).reshape(y.shape)
  return y + jnp.einsum(eqs[1], jnp.einsum(eqs[0], x, a), b)


def _one_device() -> bool:
  """Whether the program being traced runs on one device (no mesh set counts as one)."""
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.empty or mesh.size == 1


class Attention(nn.Module):
  """Grouped-query attention with RoPE, optional q/k/v biases and q/k RMSNorm."""

  config: DecoderConfig

  def _proj(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...]) -> Array:
    c = self.config
    w = self.param(name, nn.with_logical_partitioning(_NORMAL, axes), shape, c.jnp_param_dtype)
    return w.astype(c.jnp_dtype)

  def _bias(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...]) -> Array:
    c = self.config
    b = self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape,
                   c.jnp_param_dtype)
    return b.astype(c.jnp_dtype)

  @nn.compact
  def __call__(self, x: Array, sin: Array, cos: Array, attn_mask: Array,
               cache: Cache | None, layer: Array, cache_index: Array | None,
               prefix: Cache | None = None
               ) -> tuple[Array, Cache | None, Cache]:
    """Returns (output, updated cache or None, this call's keys and values {'k','v'}).

    `prefix` ({'k','v'}: [B/C,P,K,H], RoPE already applied) holds keys and values of earlier
    positions computed by another call (a shared prompt), each prefix row serving C
    consecutive rows; they are attended to before this call's own, so attn_mask is then
    [B,T,P+T].
    """
    c = self.config
    d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    dt = c.jnp_dtype
    q = jnp.einsum("BTD,DNH->BTNH", x, self._proj("q_proj", (d, n, h),
                                                  ("embed", "q_heads", "head_dim")))
    q = _with_lora(self, "q_proj", q, x, dt, ("BTD,DR->BTR", "BTR,RNH->BTNH"))
    key = jnp.einsum("BTD,DKH->BTKH", x, self._proj("k_proj", (d, k, h),
                                                    ("embed", "kv_heads", "head_dim")))
    key = _with_lora(self, "k_proj", key, x, dt, ("BTD,DR->BTR", "BTR,RKH->BTKH"))
    val = jnp.einsum("BTD,DKH->BTKH", x, self._proj("v_proj", (d, k, h),
                                                    ("embed", "kv_heads", "head_dim")))
    val = _with_lora(self, "v_proj", val, x, dt, ("BTD,DR->BTR", "BTR,RKH->BTKH"))
    if c.attention_bias:
      q = q + self._bias("q_bias", (n, h), ("q_heads", "head_dim"))
      key = key + self._bias("k_bias", (k, h), ("kv_heads", "head_dim"))
      val = val + self._bias("v_bias", (k, h), ("kv_heads", "head_dim"))
    if c.qk_norm:
      norm = lambda name: RMSNorm(c.rms_norm_eps, c.jnp_dtype, c.jnp_param_dtype,
                                  axis_name="head_dim", name=name)
      q = norm("q_norm")(q)
      key = norm("k_norm")(key)
    q = apply_rope(q, sin, cos)
    key = apply_rope(key, sin, cos)

    kv = {"k": key, "v": val}
    new_cache = None
    if prefix is not None and cache is not None:
      raise ValueError("Attention: a prefix and a cache cannot be used together")
    if cache is not None:
      # Write this call's T keys/values into this layer's rows of the whole cache at
      # cache_index (in place: the cache rides in the scan carry), then attend over the
      # layer's full cache.
      zero = jnp.zeros((), jnp.int32)
      slot = jnp.asarray(cache_index, jnp.int32)
      start = (layer, zero, zero, slot, zero)
      ck = jax.lax.dynamic_update_slice(
          cache["k"], key.astype(cache["k"].dtype).transpose(0, 2, 1, 3)[None], start)
      cv = jax.lax.dynamic_update_slice(
          cache["v"], val.astype(cache["v"].dtype).transpose(0, 2, 1, 3)[None], start)
      new_cache = {"k": ck, "v": cv}
      key = jax.lax.dynamic_index_in_dim(ck, layer, keepdims=False).astype(c.jnp_dtype)
      val = jax.lax.dynamic_index_in_dim(cv, layer, keepdims=False).astype(c.jnp_dtype)

    b, t = x.shape[:2]
    g = n // k
    qg = q.reshape(b, t, k, g, h)  # [B,T,K,G,H]
    wo = self._proj("o_proj", (n, h, d), ("q_heads", "head_dim", "embed"))
    proj = None
    if prefix is None:
      # Keys and values as computed are [B,S,K,H]; read from the cache, [B,K,S,H].
      k_in, v_in = ("BKSH", "BKSH") if cache is not None else ("BSKH", "BSKH")
      logits = jnp.einsum(f"BTKGH,{k_in}->BKGTS", qg, key, preferred_element_type=jnp.float32)
      probs = _attention_probs(logits, attn_mask, h, c.jnp_dtype)
      if t == 1:
        # A decode step: o_proj takes the heads in the p.v product's own layout [B,K,G,1,H]
        # as one [B, N*H] matrix. From [B,T,N,H], XLA on the CPU transposed every layer's
        # o_proj weights at every step instead. `out` (a tiny transpose) feeds LoRA only.
        heads = jnp.einsum(f"BKGTS,{v_in}->BKGTH", probs, val)
        proj = jnp.dot(heads.reshape(b, n * h), wo.reshape(n * h, d))[:, None]
        out = heads.transpose(0, 3, 1, 2, 4)
      else:
        out = jnp.einsum(f"BKGTS,{v_in}->BTKGH", probs, val)
    else:
      out = _attend_with_prefix(qg, key, val, prefix, attn_mask, c.jnp_dtype)
    out = out.reshape(b, t, n, h)
    if proj is None:
      proj = jnp.einsum("BTNH,NHD->BTD", out, wo)
    proj = _with_lora(self, "o_proj", proj, out, dt, ("BTNH,NHR->BTR", "BTR,RD->BTD"))
    return proj, new_cache, kv


def _attention_probs(scores: Array, attn_mask: Array, head_dim: int, dtype: Any) -> Array:
  """Softmax over S of the fp32 scores q.k [B,K,G,T,S] / sqrt(H), masked by [B,T,S]."""
  logits = scores / math.sqrt(head_dim)
  logits = jnp.where(attn_mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1).astype(dtype)


def _attend_with_prefix(qg: Array, key: Array, val: Array, prefix: Cache, attn_mask: Array,
                        dtype: Any) -> Array:
  """Attention over [prefix keys; this call's keys] -> [B,T,K,G,H].

  The prefix may be shared: {'k','v'} [B/C,P,K,H] serves C consecutive rows each (a shared
  prompt's group), and its keys and values are never repeated per row. The scores against
  the prefix and against this call's keys form one softmax over P+T positions, as one pass
  over the concatenated keys would.
  """
  b, t, k, g, h = qg.shape
  pk, pv = prefix["k"].astype(key.dtype), prefix["v"].astype(val.dtype)  # [B/C,P,K,H]
  groups, p = pk.shape[:2]
  if b % groups:
    raise ValueError(f"Attention: a prefix of {groups} rows cannot serve {b} rows")
  c = b // groups
  qc = qg.reshape(groups, c, t, k, g, h)
  prefix_logits = jnp.einsum("BCTKGH,BSKH->BCKGTS", qc, pk,
                             preferred_element_type=jnp.float32).reshape(b, k, g, t, p)
  own_logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, key, preferred_element_type=jnp.float32)
  probs = _attention_probs(jnp.concatenate([prefix_logits, own_logits], axis=-1), attn_mask,
                           h, dtype)  # [B,K,G,T,P+T]
  from_prefix = jnp.einsum("BCKGTS,BSKH->BCTKGH",
                           probs[..., :p].reshape(groups, c, k, g, t, p), pv)
  return (from_prefix.reshape(b, t, k, g, h)
          + jnp.einsum("BKGTS,BSKH->BTKGH", probs[..., p:], val))


class MLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.config
    init = lambda axes: nn.with_logical_partitioning(_NORMAL, axes)
    gate = self.param("gate_proj", init(("embed", "mlp")), (c.hidden_size, c.intermediate_size),
                      c.jnp_param_dtype).astype(c.jnp_dtype)
    up = self.param("up_proj", init(("embed", "mlp")), (c.hidden_size, c.intermediate_size),
                    c.jnp_param_dtype).astype(c.jnp_dtype)
    down = self.param("down_proj", init(("mlp", "embed")), (c.intermediate_size, c.hidden_size),
                      c.jnp_param_dtype).astype(c.jnp_dtype)
    dt = c.jnp_dtype
    into, outof = ("BTD,DR->BTR", "BTR,RF->BTF"), ("BTF,FR->BTR", "BTR,RD->BTD")
    g = _with_lora(self, "gate_proj", jnp.einsum("BTD,DF->BTF", x, gate), x, dt, into, True)
    u = _with_lora(self, "up_proj", jnp.einsum("BTD,DF->BTF", x, up), x, dt, into, True)
    hidden = jax.nn.silu(g) * u
    return _with_lora(self, "down_proj", jnp.einsum("BTF,FD->BTD", hidden, down), hidden, dt,
                      outof, True)


class DecoderLayer(nn.Module):
  """Pre-norm block; the scan body.

  Carry: (hidden [B,T,D], the whole cache (`Cache`) or None); scanned in: the layer index
  and the layer's prefix keys/values (or None); scanned out: the layer's keys/values when
  `collect_kv`, else nothing.
  Carrying the whole cache (rather than scanning its per-layer slices in and out) lets XLA
  update it in place: a decode step writes one slot per layer instead of a new cache.
  """

  config: DecoderConfig
  # Emit this layer's keys and values as the scan output (a shared prompt's forward).
  collect_kv: bool = False

  @nn.compact
  def __call__(self, carry: tuple[Array, Cache | None], xs: tuple[Array, Cache | None],
               sin: Array, cos: Array, attn_mask: Array, cache_index: Array | None
               ) -> tuple[tuple[Array, Cache | None], Cache | None]:
    c = self.config
    x, cache = carry
    layer, prefix = xs  # the layer index and this layer's prefix keys/values (or None)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "embed"))
    h = RMSNorm(c.rms_norm_eps, c.jnp_dtype, c.jnp_param_dtype, name="input_norm")(x)
    attn, cache, kv = Attention(c, name="attn")(h, sin, cos, attn_mask, cache, layer,
                                                cache_index, prefix)
    x = x + attn
    h = RMSNorm(c.rms_norm_eps, c.jnp_dtype, c.jnp_param_dtype, name="post_attn_norm")(x)
    x = x + MLP(c, name="mlp")(h)
    return (x, cache), (kv if self.collect_kv else None)


class Decoder(nn.Module):
  """Token ids -> final hidden states [B,T,D] (and the updated cache).

  Logits are produced by `unembed` so callers can chunk the vocabulary projection.
  """

  config: DecoderConfig
  collect_kv: bool = False  # also return every layer's keys/values {'k','v'}: [L,B,T,K,H]

  def setup(self):
    c = self.config
    self.embed = self.param(
        "embed", nn.with_logical_partitioning(_NORMAL, ("vocab", "embed")),
        (c.vocab_size, c.hidden_size), c.jnp_param_dtype)
    if not c.tie_word_embeddings:
      self.lm_head = self.param(
          "lm_head", nn.with_logical_partitioning(_NORMAL, ("embed", "vocab")),
          (c.hidden_size, c.vocab_size), c.jnp_param_dtype)
    # With remat, each layer's activations are recomputed in the backward pass instead of
    # stored: the update of an 8B model over long completions then fits a TPU chip.
    layer = (nn.remat(DecoderLayer, prevent_cse=False,
                      policy=jax.checkpoint_policies.nothing_saveable)
             if c.remat else DecoderLayer)
    stack = nn.scan(
        layer,
        variable_axes={"params": 0, "lora": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=c.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    self.layers = stack(c, self.collect_kv, name="layers")
    self.final_norm = RMSNorm(c.rms_norm_eps, c.jnp_dtype, c.jnp_param_dtype)

  def __call__(self, tokens: Array, positions: Array, attn_mask: Array,
               cache: Cache | None = None, cache_index: Array | None = None,
               prefix: Cache | None = None) -> tuple[Array, Cache | None]:
    c = self.config
    x = self.embed_tokens(tokens)  # [B,T,D]
    sin, cos = rope_sin_cos(c, positions)
    layer_ids = jnp.arange(c.num_layers, dtype=jnp.int32)
    (x, new_cache), kv = self.layers((x, cache), (layer_ids, prefix), sin, cos, attn_mask,
                                     cache_index)
    if self.collect_kv:
      return self.final_norm(x), kv
    return self.final_norm(x), new_cache

  def embed_tokens(self, tokens: Array) -> Array:
    """Token ids [B,T] -> input embeddings [B,T,D] in the compute dtype."""
    return jnp.take(self.embed, tokens, axis=0).astype(self.config.jnp_dtype)

  def final_hidden(self, x: Array) -> Array:
    """The last layer's output -> final hidden states (the final norm)."""
    return self.final_norm(x)

  def logits(self, hidden: Array) -> Array:
    """hidden [B,T,D] -> float32 logits [B,T,V]."""
    c = self.config
    if c.tie_word_embeddings:
      w = self.embed.astype(c.jnp_dtype)
      return jnp.einsum("BTD,VD->BTV", hidden, w, preferred_element_type=jnp.float32)
    w = self.lm_head.astype(c.jnp_dtype)
    return jnp.einsum("BTD,DV->BTV", hidden, w, preferred_element_type=jnp.float32)


class ValueHead(nn.Module):
  """Scalar value per token from the policy's final hidden state (PPO critic).

  Zero-initialised, so a fresh critic predicts 0 everywhere and starts from no bias.
  """

  hidden_size: int
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array) -> Array:
    w = self.param("kernel", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                   (self.hidden_size,), self.param_dtype)
    b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ()), (),
                   self.param_dtype)
    return jnp.einsum("BTD,D->BT", hidden.astype(jnp.float32), w.astype(jnp.float32)) + b


# ---------------------------------------------------------------------------------------------
# Pure functions used by the sampler and the trainer.
# ---------------------------------------------------------------------------------------------


def init_params(config: DecoderConfig, rng: Array) -> Params:
  """Random parameters (plain arrays, no partitioning boxes)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = Decoder(config).init(rng, tokens, tokens, jnp.ones((1, 1, 1), bool))
  return nn.unbox(variables["params"])


def param_logical_axes(config: DecoderConfig) -> Any:
  """Pytree (same structure as params) of logical PartitionSpecs, computed abstractly."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(
      lambda: Decoder(config).init(jax.random.PRNGKey(0), tokens, tokens,
                                   jnp.ones((1, 1, 1), bool)))
  return nn.get_partition_spec(abstract)["params"]


def param_shapes(config: DecoderConfig) -> Any:
  """Pytree of jax.ShapeDtypeStruct for every parameter, without allocating."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def count_params(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def causal_mask(valid: Array) -> Array:
  """[B,T] validity (1 for real tokens, 0 for padding) -> [B,T,T] causal attention mask.

  Padding keys are never attended to; a padding query attends to itself only so its softmax
  stays finite.
  """
  t = valid.shape[1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  valid = valid.astype(bool)
  mask = causal[None] & valid[:, None, :]
  return mask | jnp.eye(t, dtype=bool)[None]


def positions_from_mask(valid: Array) -> Array:
  """Positions [B,T] that count only real tokens (left padding gets position 0)."""
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def init_cache(config: DecoderConfig, batch: int, length: int,
               dtype: jnp.dtype | None = None) -> Cache:
  """Zero KV cache {'k','v'}: [L,B,K,S,H] in the compute dtype (or `dtype`)."""
  shape = (config.num_layers, batch, config.num_kv_heads, length, config.head_dim)
  dtype = dtype or config.jnp_dtype
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def cache_logical_axes() -> dict[str, tuple[str, ...]]:
  """The logical axis names of `init_cache`'s keys and values, dimension by dimension."""
  axes = ("layers", "activation_batch", "kv_heads", "activation_length", "head_dim")
  return {"k": axes, "v": axes}


def forward(params: Params, config: DecoderConfig, tokens: Array, positions: Array,
            attn_mask: Array, cache: Cache | None = None, cache_index: Array | None = None,
            lora: Params | None = None, lora_scale: float = 1.0, *,
            prefix: Cache | None = None, collect_kv: bool = False
            ) -> tuple[Array, Cache | None]:
  """Final hidden states [B,T,D] and the updated cache (or, with `collect_kv`, the keys/values).

  Args:
    params: decoder parameters.
    config: architecture.
    tokens: [B,T] int ids.
    positions: [B,T] RoPE positions.
    attn_mask: [B,T,S] bool; S = T without a cache, the cache length with one.
    cache: KV cache from `init_cache`, or None.
    cache_index: int32 scalar, the cache slot where this call's first token is written.
    lora: LoRA adapters (`pbrl_jax.models.lora.init_lora`), applied unmerged: each adapted
      projection adds lora_scale * ((x A) B) to x W.
    lora_scale: alpha / rank.
    prefix: {'k','v'}: [L,B/C,P,K,H] keys and values of P earlier positions (a shared
      prompt, from a `collect_kv` call), attended to before this call's tokens; each prefix
      row serves C consecutive rows (a group sharing its prompt; C = 1: one each), without
      being repeated. attn_mask is then [B,T,P+T] and `positions` continue the prefix's. Not
      with a cache.
    collect_kv: return {'k','v'}: [L,B,T,K,H], this call's keys and values, in place of the
      cache (what `prefix` takes).
  """
  variables = {"params": params}
  if lora is not None:
    # The collection mirrors the module tree (layers/attn/...).
    variables["lora"] = {"layers": _scaled_lora(lora["layers"], lora_scale)}
  return Decoder(config, collect_kv).apply(variables, tokens, positions, attn_mask, cache,
                                           cache_index, prefix)


def _scaled_lora(adapters: Params, lora_scale: float) -> Params:
  """The adapters with the scale folded into B (each adapted projection adds (x A) (s B))."""
  return jax.tree.map(lambda ad: {"a": ad["a"], "b": ad["b"] * lora_scale}, adapters,
                      is_leaf=lambda x: isinstance(x, dict) and "a" in x)


def unstack_layers(stacked: Params) -> tuple[Params, ...]:
  """The L per-layer trees of a layer stack (every leaf [L, ...]): each slice taken once.

  For `forward_per_layer`. Inside a decode loop over the stacked arrays, XLA on the CPU
  copies every layer's weights out of the stack at every step; slices taken once before the
  loop cost one copy of the weights per sampler call instead (SmolLM2-135M, 16 rows: 1.15x
  the tokens per second, benchmarks/RESULTS.md).
  """
  n = jax.tree.leaves(stacked)[0].shape[0]
  return tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n))


def forward_per_layer(params: Params, layers: tuple[Params, ...], config: DecoderConfig,
                      tokens: Array, positions: Array, attn_mask: Array, cache: Cache,
                      cache_index: Array, lora_layers: tuple[Params, ...] | None = None,
                      lora_scale: float = 1.0) -> tuple[Array, Cache]:
  """`forward` with a cache, the layers applied one by one from per-layer weights.

  The same layer code and the same result as `forward` (which scans the stacked weights);
  `layers` (and `lora_layers`) come from `unstack_layers`, `params` supplies the embedding
  and the final norm (its 'layers' entry, if any, is not read). The layer loop is unrolled
  in the program: what the sampler's decode step uses on the CPU, not for training.
  """
  if lora_layers is not None and len(lora_layers) != len(layers):
    raise ValueError(f"forward_per_layer: {len(lora_layers)} LoRA layers for "
                     f"{len(layers)} layers")
  top = {"params": {k: v for k, v in params.items() if k != "layers"}}
  x = Decoder(config).apply(top, tokens, method=Decoder.embed_tokens)
  sin, cos = rope_sin_cos(config, positions)
  block = DecoderLayer(config)
  for i, weights in enumerate(layers):
    variables = {"params": weights}
    if lora_layers is not None:
      variables["lora"] = _scaled_lora(lora_layers[i], lora_scale)
    (x, cache), _ = block.apply(variables, (x, cache), (jnp.asarray(i, jnp.int32), None),
                                sin, cos, attn_mask, cache_index)
  return Decoder(config).apply(top, x, method=Decoder.final_hidden), cache


def unembed(params: Params, config: DecoderConfig, hidden: Array) -> Array:
  """Hidden [B,T,D] -> float32 logits [B,T,V]."""
  return Decoder(config).apply({"params": params}, hidden, method=Decoder.logits)


def logits_fn(params: Params, config: DecoderConfig, tokens: Array,
              valid: Array | None = None) -> Array:
  """Full-sequence logits [B,T,V] for (optionally padded) tokens [B,T]."""
  if valid is None:
    valid = jnp.ones(tokens.shape, jnp.int32)
  hidden, _ = forward(params, config, tokens, positions_from_mask(valid), causal_mask(valid))
  return unembed(params, config, hidden)


def token_logprobs(logits: Array, targets: Array, temperature: float = 1.0) -> Array:
  """log softmax(logits / temperature) at targets: [B,T,V], [B,T] -> [B,T] float32."""
  logits = logits.astype(jnp.float32) / temperature
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def output_embedding(params: Params, config: DecoderConfig) -> Array:
  """The unembedding as [V, D] in the compute dtype (`Decoder.logits` is h times its transpose)."""
  if config.tie_word_embeddings:
    return params["embed"].astype(config.jnp_dtype)
  return params["lm_head"].astype(config.jnp_dtype).T


def token_logp_entropy(params: Params, config: DecoderConfig, hidden: Array, targets: Array,
                       temperature: float = 1.0) -> tuple[Array, Array]:
  """Log-probs of `targets` and entropies at hidden states [B,T,D]: ([B,T], [B,T]) float32.

  With `config.vocab_block` K > 0 and V > K the vocabulary is processed in blocks of K
  (`vocab_blocks`): no [B,T,V] logits in the forward or the backward pass. Otherwise the
  logits are formed whole (`unembed`), which is the same up to float rounding.
  """
  if config.vocab_block and config.vocab_size > config.vocab_block:
    from pbrl_jax.models import vocab_blocks  # pylint: disable=g-import-not-at-top
    return vocab_blocks.token_logp_entropy(hidden, output_embedding(params, config), targets,
                                           block=config.vocab_block, temperature=temperature)
  logits = unembed(params, config, hidden) / temperature
  return token_logprobs(logits, targets), token_entropy(logits)


def token_entropy(logits: Array) -> Array:
  """Entropy of softmax(logits) per position: [B,T,V] -> [B,T]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
