"""BERT-family sentence encoders (BERT, RoBERTa, XLM-RoBERTa) in Flax linen.

Loads a Hugging Face model directory (config.json + safetensors) together with its
sentence-transformers configuration (modules.json, 1_Pooling/config.json: mean or CLS pooling;
a Normalize module). The tokenizer is transformers' AutoTokenizer from the same directory,
local files only. Embeddings are always L2-normalised, because rewards compare them by cosine.

Axis letters: B batch, T tokens, V vocabulary, P positions, D model dim, N heads, H head dim,
F ffw dim.

RoBERTa / XLM-R differ from BERT only in positions: ids start at padding_idx + 1 and count
real tokens only (`cumsum(mask) * mask + padding_idx`), and one token type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax.models.encoders import common

Array = jax.Array
Params = Any

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
_MODEL_TYPES = ("bert",) + _ROBERTA_TYPES
_ZEROS = nn.initializers.zeros


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture and pooling of one BERT-family encoder."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  hidden_act: str
  pad_token_id: int
  roberta_positions: bool  # positions start at pad_token_id + 1 and skip padding
  pooling: str = "mean"  # 'mean' | 'cls'
  max_tokens: int = 512

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, cfg: dict[str, Any], path: str, pooling: str = "mean",
              max_seq_length: int | None = None) -> "BertConfig":
    model_type = cfg.get("model_type")
    if model_type not in _MODEL_TYPES:
      raise ValueError(f"{path}: model_type {model_type!r} is not one of {_MODEL_TYPES}")
    act = cfg.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
      raise ValueError(f"{path}: hidden_act {act!r} is not one of {sorted(_ACTIVATIONS)}")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{path}: position_embedding_type"
                       f" {cfg['position_embedding_type']!r} is not supported (absolute only)")
    roberta = model_type in _ROBERTA_TYPES
    pad = int(cfg.get("pad_token_id", 1 if roberta else 0))
    room = cfg["max_position_embeddings"] - (pad + 1 if roberta else 0)
    max_tokens = min(room, max_seq_length or room)
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
      raise ValueError(f"{path}: hidden_size is not divisible by num_attention_heads")
    return cls(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
               num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
               intermediate_size=cfg["intermediate_size"],
               max_position_embeddings=cfg["max_position_embeddings"],
               type_vocab_size=cfg.get("type_vocab_size", 2),
               layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)), hidden_act=act,
               pad_token_id=pad, roberta_positions=roberta, pooling=pooling,
               max_tokens=int(max_tokens))


class _LayerNorm(nn.Module):
  eps: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (d,))
    bias = self.param("bias", nn.with_logical_partitioning(_ZEROS, ("embed",)), (d,))
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class _Layer(nn.Module):
  """Post-norm encoder block (attention, then feed-forward)."""

  config: BertConfig

  def _w(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...]) -> Array:
    return self.param(name, nn.with_logical_partitioning(_ZEROS, axes), shape)

  @nn.compact
  def __call__(self, x: Array, key_mask: Array) -> Array:
    c = self.config
    d, n, h, f = c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size
    proj = lambda name: (jnp.einsum("BTD,DNH->BTNH", x, self._w(
        name, (d, n, h), ("embed", "q_heads", "head_dim"))) + self._w(
            name + "_b", (n, h), ("q_heads", "head_dim")))
    q, k, v = proj("q"), proj("k"), proj("v")
    logits = jnp.einsum("BTNH,BSNH->BNTS", q, k) / math.sqrt(h)
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    attn = jnp.einsum("BNTS,BSNH->BTNH", jax.nn.softmax(logits, axis=-1), v)
    attn = jnp.einsum("BTNH,NHD->BTD", attn, self._w("o", (n, h, d),
                                                      ("q_heads", "head_dim", "embed")))
    x = _LayerNorm(c.layer_norm_eps, name="attn_ln")(x + attn + self._w("o_b", (d,), ("embed",)))
    act = _ACTIVATIONS[c.hidden_act]
    up = act(jnp.einsum("BTD,DF->BTF", x, self._w("up", (d, f), ("embed", "mlp")))
             + self._w("up_b", (f,), ("mlp",)))
    down = jnp.einsum("BTF,FD->BTD", up, self._w("down", (f, d), ("mlp", "embed")))
    return _LayerNorm(c.layer_norm_eps, name="out_ln")(x + down
                                                      + self._w("down_b", (d,), ("embed",)))


class BertEncoderModule(nn.Module):
  """ids [B,T], mask [B,T], token types [B,T] -> pooled, L2-normalised [B,D] float32."""

  config: BertConfig

  @nn.compact
  def __call__(self, ids: Array, mask: Array, token_type_ids: Array) -> Array:
    c = self.config
    emb = lambda name, rows, axes: self.param(
        name, nn.with_logical_partitioning(_ZEROS, axes), (rows, c.hidden_size))
    m = mask.astype(jnp.int32)
    if c.roberta_positions:
      positions = jnp.cumsum(m, axis=1) * m + c.pad_token_id
    else:
      positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    x = (emb("word", c.vocab_size, ("vocab", "embed"))[ids]
         + emb("position", c.max_position_embeddings, (None, "embed"))[positions]
         + emb("token_type", c.type_vocab_size, (None, "embed"))[token_type_ids])
    x = _LayerNorm(c.layer_norm_eps, name="embed_ln")(x)
    for i in range(c.num_layers):
      x = _Layer(c, name=f"layer_{i}")(x, m > 0)
    if c.pooling == "cls":
      pooled = x[:, 0]
    else:
      mf = m.astype(x.dtype)[..., None]
      pooled = jnp.sum(x * mf, axis=1) / jnp.maximum(jnp.sum(mf, axis=1), 1e-9)
    norm = jnp.sqrt(jnp.sum(pooled * pooled, axis=-1, keepdims=True))
    return pooled / jnp.maximum(norm, 1e-12)


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    with open(index) as f:
      files = sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
  else:
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
  out = {}
  for file in files:
    out.update(load_file(file))
  return out


def params_from_state_dict(sd: dict[str, np.ndarray], config: BertConfig,
                           path: str = "<state dict>") -> Params:
  """Maps Hugging Face BertModel / XLMRobertaModel tensor names to our parameter tree."""
  prefixes = ("bert.", "roberta.", "model.", "")
  def get(name: str) -> np.ndarray:
    for p in prefixes:
      for alt in (name, name.replace(".weight", ".gamma").replace(".bias", ".beta")):
        if p + alt in sd:
          return np.asarray(sd[p + alt], np.float32)
    raise KeyError(f"{path}: tensor {name!r} not found in the checkpoint")

  d, n, h = config.hidden_size, config.num_heads, config.head_dim
  ln = lambda prefix: {"scale": jnp.asarray(get(prefix + ".weight")),
                       "bias": jnp.asarray(get(prefix + ".bias"))}
  params: dict[str, Any] = {
      "word": jnp.asarray(get("embeddings.word_embeddings.weight")),
      "position": jnp.asarray(get("embeddings.position_embeddings.weight")),
      "token_type": jnp.asarray(get("embeddings.token_type_embeddings.weight")),
      "embed_ln": ln("embeddings.LayerNorm"),
  }
  for i in range(config.num_layers):
    pre = f"encoder.layer.{i}."
    layer = {}
    for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
      # torch Linear stores [out, in]; ours is [D, N, H].
      layer[ours] = jnp.asarray(get(pre + f"attention.self.{theirs}.weight").T.reshape(d, n, h))
      layer[ours + "_b"] = jnp.asarray(get(pre + f"attention.self.{theirs}.bias").reshape(n, h))
    layer["o"] = jnp.asarray(get(pre + "attention.output.dense.weight").T.reshape(n, h, d))
    layer["o_b"] = jnp.asarray(get(pre + "attention.output.dense.bias"))
    layer["attn_ln"] = ln(pre + "attention.output.LayerNorm")
    layer["up"] = jnp.asarray(get(pre + "intermediate.dense.weight").T)
    layer["up_b"] = jnp.asarray(get(pre + "intermediate.dense.bias"))
    layer["down"] = jnp.asarray(get(pre + "output.dense.weight").T)
    layer["down_b"] = jnp.asarray(get(pre + "output.dense.bias"))
    layer["out_ln"] = ln(pre + "output.LayerNorm")
    params[f"layer_{i}"] = layer
  return params


def _sentence_transformers_pooling(path: str) -> tuple[str, int | None]:
  """('mean' | 'cls', max_seq_length or None) from the sentence-transformers files, if any."""
  pooling, max_len = "mean", None
  modules_file = os.path.join(path, "modules.json")
  if os.path.isfile(modules_file):
    with open(modules_file) as f:
      modules = json.load(f)
    for m in modules:
      if m.get("type", "").endswith("Pooling"):
        with open(os.path.join(path, m.get("path", ""), "config.json")) as f:
          pc = json.load(f)
        modes = [k for k in ("pooling_mode_cls_token", "pooling_mode_mean_tokens",
                             "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                             "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
                 if pc.get(k)]
        if modes == ["pooling_mode_cls_token"]:
          pooling = "cls"
        elif modes != ["pooling_mode_mean_tokens"]:
          raise ValueError(f"{path}/{m.get('path')}/config.json: pooling {modes} is not"
                           " supported (mean or cls only)")
  st_file = os.path.join(path, "sentence_bert_config.json")
  if os.path.isfile(st_file):
    with open(st_file) as f:
      max_len = json.load(f).get("max_seq_length")
  return pooling, max_len


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
  """The ids a tokenizer puts before and after one sequence ([CLS] / [SEP], <s> / </s>)."""
  plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
  full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
  for start in range(len(full) - len(plain) + 1):
    if full[start:start + len(plain)] == plain:
      return full[:start], full[start + len(plain):]
  raise ValueError("tokenizer: cannot locate the special tokens around a sequence")


class BertEncoder:
  """A BERT-family model behind the `TextEncoder` interface."""

  def __init__(self, config: BertConfig, params: Params, tokenizer: Any, name: str,
               calibration: tuple[float, float] = (0.0, 1.0)):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.name = name
    self.dim = config.hidden_size
    self.max_tokens = config.max_tokens
    self.calibration = calibration
    self.buckets = common.length_buckets(self.max_tokens)
    self._prefix, self._suffix = _special_tokens(tokenizer)
    self.module = BertEncoderModule(config)
    self._embed_jit = jax.jit(self.embed)
    ex = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), ex, ex, ex))
    want = jax.tree.map(lambda s: s.shape, nn.unbox(abstract)["params"])
    got = jax.tree.map(lambda a: a.shape, params)
    if want != got:
      raise ValueError(f"{name}: parameter tree does not match BertConfig")

  def logical_axes(self) -> Any:
    ex = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), ex, ex, ex))
    return nn.get_partition_spec(abstract)["params"]

  def token_ids(self, text: str) -> list[int]:
    return list(self.tokenizer(common.clean_text(text), add_special_tokens=False,
                               truncation=False)["input_ids"])

  def _wrap(self, ids: Sequence[int]) -> list[int]:
    room = self.max_tokens - len(self._prefix) - len(self._suffix)
    return self._prefix + list(ids)[:room] + self._suffix

  def _pad(self, rows: Sequence[Sequence[int]], rows_to: int | None = None
           ) -> dict[str, np.ndarray]:
    length = common.bucket_for(max([len(r) for r in rows] + [1]), self.buckets)
    rows = list(rows) + [[]] * ((rows_to or len(rows)) - len(rows))
    ids, mask = common.pad_ids(rows, length, self.config.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

  def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    return self._pad([self._wrap(self.token_ids(t)) for t in texts])

  def window_count(self, text: str) -> int:
    """How many windows `encode` embeds `text` in (1: `tokenize` sees all of it)."""
    width = self.max_tokens - len(self._prefix) - len(self._suffix)
    return len(common.windows(self.token_ids(text), width))

  def embed(self, params: Params, batch: dict[str, Array]) -> Array:
    return self.module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                             batch["token_type_ids"])

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    width = self.max_tokens - len(self._prefix) - len(self._suffix)
    pieces = [[self._wrap(w) for w in common.windows(self.token_ids(t), width)] for t in texts]

    def embed_rows(rows: list[list[int]]) -> np.ndarray:
      rows_to = 1 << max(len(rows) - 1, 0).bit_length()
      return np.asarray(self._embed_jit(self.params, self._pad(rows, rows_to)))[:len(rows)]

    return common.encode_windows(pieces, embed_rows, batch_size)


def load_hf_encoder(path: str, calibration: tuple[float, float] | None = None) -> BertEncoder:
  """A BERT / RoBERTa / XLM-R encoder from a local Hugging Face (sentence-transformers) dir.

  Args:
    path: directory with config.json, model.safetensors (or a sharded index) and tokenizer
      files; modules.json / 1_Pooling/config.json when it is a sentence-transformers model.
    calibration: (unrelated-pair cosine, translation-pair cosine); `pbrl_jax.rewards.calibration`
      measures it. Without one the identity map (0, 1) is used.
  """
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

  cfg_file = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_file):
    raise FileNotFoundError(f"{path}: no config.json")
  with open(cfg_file) as f:
    hf = json.load(f)
  pooling, max_len = _sentence_transformers_pooling(path)
  config = BertConfig.from_hf(hf, path, pooling, max_len)
  params = params_from_state_dict(_read_state_dict(path), config, path)
  tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
  name = "hf:" + os.path.basename(os.path.normpath(path))
  return BertEncoder(config, params, tokenizer, name, calibration or (0.0, 1.0))
