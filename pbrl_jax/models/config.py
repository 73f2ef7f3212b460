"""Typed configuration of the decoder-only transformer family.

One frozen dataclass covers Llama 3.x, Qwen2/2.5, Qwen3 and SmolLM2 (a Llama with tied
embeddings). It is built from a Hugging Face `config.json` dictionary by `from_hf_dict`,
validated once, and never probed with defaults below this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

SUPPORTED_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


class ConfigError(ValueError):
  """A model configuration that cannot be used; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling; `rope_type` is 'default', 'linear' or 'llama3'."""

  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture facts of one decoder-only model, plus its dtype policy.

  Attributes:
    model_type: 'llama', 'qwen2' or 'qwen3'.
    vocab_size: V.
    hidden_size: D.
    intermediate_size: F.
    num_layers: L.
    num_heads: N, query heads.
    num_kv_heads: K, key/value heads (GQA when K < N).
    head_dim: H (Qwen3 sets it independently of D / N).
    rms_norm_eps: epsilon of every RMSNorm.
    rope_theta: RoPE base.
    rope_scaling: frequency scaling, or None.
    attention_bias: q/k/v projections have biases (Qwen2).
    qk_norm: RMSNorm over H on queries and keys before RoPE (Qwen3).
    tie_word_embeddings: the output projection is the embedding matrix transposed.
    max_position_embeddings: the longest context the model was trained for.
    bos_token_id: beginning-of-sequence id, or None.
    eos_token_ids: every id that ends a generation.
    pad_token_id: padding id used in batches (never attended to).
    param_dtype: dtype parameters are stored in.
    dtype: compute dtype of matmuls; norms, softmax and logits run in float32.
    remat: recompute each layer's activations in the backward pass (memory for FLOPs).
    vocab_block: vocabulary rows per block when scoring log-probs and entropies
      (`decoder.token_logp_entropy`); 0 forms the [B,T,V] logits whole.
  """

  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  attention_bias: bool = False
  qk_norm: bool = False
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 4096
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: bool = False
  vocab_block: int = 0

  def __post_init__(self):
    if self.model_type not in SUPPORTED_ARCHITECTURES:
      raise ConfigError(
          f"model_type: unsupported architecture {self.model_type!r}; supported:"
          f" {sorted(SUPPORTED_ARCHITECTURES)}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                 "num_heads", "num_kv_heads", "head_dim"):
      if int(getattr(self, name)) <= 0:
        raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
    if int(self.vocab_block) < 0:
      raise ConfigError(f"vocab_block: must be >= 0 (0: whole vocabulary), got {self.vocab_block}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"num_key_value_heads: {self.num_kv_heads} does not divide num_attention_heads"
          f" {self.num_heads}")
    for name in ("param_dtype", "dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ConfigError(f"{name}: unknown dtype {getattr(self, name)!r}") from e

  @property
  def jnp_param_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs: Any) -> "DecoderConfig":
    return dataclasses.replace(self, **kwargs)

  @classmethod
  def from_hf_dict(cls, d: Mapping[str, Any], *, source: str = "config.json",
                   **overrides: Any) -> "DecoderConfig":
    """Builds the config from a Hugging Face config.json dictionary.

    Args:
      d: the parsed config.json.
      source: file name used in error messages.
      **overrides: fields to set after parsing (for example param_dtype).

    Returns:
      The validated config.

    Raises:
      ConfigError: naming the file and the missing or unsupported field.
    """
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
      archs = d.get("architectures")
      raise ConfigError(
          f"{source}: model_type {model_type!r} (architectures {archs}) is not supported;"
          f" supported: {sorted(SUPPORTED_ARCHITECTURES)}")

    def need(key: str) -> Any:
      if key not in d or d[key] is None:
        raise ConfigError(f"{source}: missing required field {key!r}")
      return d[key]

    num_heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    head_dim = d.get("head_dim") or hidden // num_heads
    rope = d.get("rope_scaling") or d.get("rope_parameters")
    rope_theta = d.get("rope_theta")
    if rope_theta is None and isinstance(rope, Mapping):
      rope_theta = rope.get("rope_theta")
    scaling = None
    if isinstance(rope, Mapping):
      rope_type = rope.get("rope_type", rope.get("type", "default"))
      if rope_type not in ("default", "linear", "llama3"):
        raise ConfigError(f"{source}: rope_scaling.rope_type {rope_type!r} is not supported")
      if rope_type != "default":
        scaling = RopeScaling(
            rope_type=rope_type,
            factor=float(rope.get("factor", 1.0)),
            low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                rope.get("original_max_position_embeddings", 8192)),
        )
    eos = d.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    pad = d.get("pad_token_id")
    if pad is None:
      pad = eos_ids[0] if eos_ids else 0
    # Qwen2 always has q/k/v biases (its config.json does not say so); the others follow
    # `attention_bias`.
    attention_bias = model_type == "qwen2" or bool(d.get("attention_bias", False))
    fields = dict(
        model_type=model_type,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=num_heads,
        num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
        rope_scaling=scaling,
        attention_bias=attention_bias,
        qk_norm=model_type == "qwen3",
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=tuple(int(e) for e in eos_ids),
        pad_token_id=int(pad),
    )
    fields.update(overrides)
    try:
      return cls(**fields)
    except ConfigError as e:
      raise ConfigError(f"{source}: {e}") from e

  def to_hf_dict(self) -> dict[str, Any]:
    """The Hugging Face config.json dictionary of this architecture."""
    d: dict[str, Any] = {
        "architectures": [SUPPORTED_ARCHITECTURES[self.model_type]],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": (list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else
                         (self.eos_token_ids[0] if self.eos_token_ids else None)),
        "pad_token_id": self.pad_token_id,
        "torch_dtype": "float32",
    }
    if self.model_type == "llama":
      d["attention_bias"] = self.attention_bias
      d["mlp_bias"] = False
    if self.model_type == "qwen3":
      d["attention_bias"] = False
    if self.rope_scaling is not None:
      s = self.rope_scaling
      d["rope_scaling"] = {
          "rope_type": s.rope_type, "factor": s.factor,
          "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
          "original_max_position_embeddings": s.original_max_position_embeddings,
      }
    return d
