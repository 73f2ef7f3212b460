"""GGUF (llama.cpp) files -> DecoderConfig, params and tokenizer, without torch.

The header (metadata and tensor table) is parsed here in one pass over a memory map: for a
vocabulary of 49k tokens and 49k merges this takes tens of milliseconds, where
`gguf.GGUFReader` builds a numpy view per array element and takes seconds. Tensor data are
slices of the same memory map, dequantised with the `gguf` package's vectorised
`gguf.quants.dequantize` (the function transformers uses too, so the weights match it bit for
bit) on a few host threads.

llama.cpp's converter permutes the rows of attn_q / attn_k of Llama-architecture models for its
interleaved RoPE; `unpermute_qk` restores the HF rotate-half layout our decoder uses.
"""

from __future__ import annotations

import mmap
import struct
from typing import Any, Sequence

import gguf
import numpy as np
from jax.sharding import Mesh

from pbrl_jax.models import sharding
from pbrl_jax.models.config import ConfigError, DecoderConfig, RopeScaling
from pbrl_jax.models.hf import LoadError, TensorSource, assemble_params

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12
_SCALAR_FORMATS = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}

# GGUF tensor name (per layer: '{i}') -> HF name.
_GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


class GGUFFile:
  """Parsed header of a GGUF file: `metadata` (key -> value) and `tensors` (name -> info).

  Tensor info: (ggml quantisation type, numpy shape (outermost first), byte offset, nbytes).
  """

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, "rb") as f:
        self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
      raise LoadError(f"{path}: cannot open GGUF file: {e}") from e
    self._buf = memoryview(self._map)
    self._pos = 0
    self.metadata: dict[str, Any] = {}
    self.tensors: dict[str, tuple[gguf.GGMLQuantizationType, tuple[int, ...], int, int]] = {}
    self._parse()

  # -- low-level readers; every overrun becomes a LoadError naming the file -----------------
  def _take(self, n: int, what: str) -> memoryview:
    end = self._pos + n
    if n < 0 or end > len(self._buf):
      raise LoadError(f"{self.path}: truncated or corrupt GGUF header while reading {what}"
                      f" (need byte {end}, file has {len(self._buf)})")
    out = self._buf[self._pos:end]
    self._pos = end
    return out

  def _scalar(self, vtype: int, what: str) -> Any:
    fmt = _SCALAR_FORMATS[vtype]
    return struct.unpack(fmt, self._take(struct.calcsize(fmt), what))[0]

  def _string(self, what: str) -> str:
    (n,) = struct.unpack("<Q", self._take(8, what))
    return bytes(self._take(n, what)).decode("utf-8", errors="replace")

  def _value(self, vtype: int, what: str) -> Any:
    if vtype == _STRING:
      return self._string(what)
    if vtype == _ARRAY:
      etype = self._scalar(_UINT32, what)
      count = self._scalar(_UINT64, what)
      if etype == _STRING:
        return [self._string(what) for _ in range(count)]
      if etype in _SCALAR_FORMATS:
        dtype = np.dtype(_SCALAR_FORMATS[etype])
        return np.frombuffer(self._take(count * dtype.itemsize, what), dtype).tolist()
      return [self._value(etype, what) for _ in range(count)]
    if vtype in _SCALAR_FORMATS:
      return self._scalar(vtype, what)
    raise LoadError(f"{self.path}: corrupt GGUF header: unknown value type {vtype} in {what}")

  def _parse(self) -> None:
    if bytes(self._take(4, "the magic")) != GGUF_MAGIC:
      raise LoadError(f"{self.path}: not a GGUF file (bad magic)")
    version = self._scalar(_UINT32, "the version")
    if version not in (2, 3):
      raise LoadError(f"{self.path}: unsupported GGUF version {version}")
    n_tensors = self._scalar(_UINT64, "the tensor count")
    n_kv = self._scalar(_UINT64, "the metadata count")
    for _ in range(n_kv):
      key = self._string("a metadata key")
      self.metadata[key] = self._value(self._scalar(_UINT32, key), f"metadata {key!r}")
    infos = []
    for _ in range(n_tensors):
      name = self._string("a tensor name")
      n_dims = self._scalar(_UINT32, f"tensor {name!r}")
      dims = [self._scalar(_UINT64, f"tensor {name!r}") for _ in range(n_dims)]
      qtype = self._scalar(_UINT32, f"tensor {name!r}")
      offset = self._scalar(_UINT64, f"tensor {name!r}")
      infos.append((name, dims, qtype, offset))
    alignment = int(self.metadata.get("general.alignment", 32))
    data_start = self._pos + (-self._pos % alignment)
    for name, dims, qtype, offset in infos:
      try:
        qtype = gguf.GGMLQuantizationType(qtype)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
      except (ValueError, KeyError) as e:
        raise LoadError(f"{self.path}: tensor {name!r}: unknown ggml type {qtype}") from e
      shape = tuple(int(x) for x in reversed(dims))  # ggml lists the innermost dim first
      if shape and shape[-1] % block:
        raise LoadError(f"{self.path}: tensor {name!r}: row size {shape[-1]} is not a multiple"
                        f" of the {qtype.name} block size {block}")
      nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * type_size
      start = data_start + offset
      if start + nbytes > len(self._buf):
        raise LoadError(f"{self.path}: tensor {name!r}: truncated file (tensor ends at byte"
                        f" {start + nbytes}, file has {len(self._buf)})")
      self.tensors[name] = (qtype, shape, start, nbytes)

  def raw(self, name: str) -> np.ndarray:
    """The stored bytes of a tensor as uint8 [rows..., bytes per row] (no copy)."""
    qtype, shape, start, nbytes = self.tensors[name]
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype) if shape else (1,)
    return np.frombuffer(self._map, np.uint8, nbytes, start).reshape(byte_shape)

  def dequantize(self, name: str) -> np.ndarray:
    """A tensor as float32 in its numpy shape (its own memory, not a view of the file)."""
    qtype, _, start, nbytes = self.tensors[name]
    raw = self.raw(name)
    try:
      out = np.asarray(gguf.quants.dequantize(raw, qtype), np.float32)
    except NotImplementedError as e:
      raise LoadError(f"{self.path}: tensor {name!r}: cannot dequantise {qtype.name}") from e
    if np.may_share_memory(out, raw):  # a float32 tensor comes back as a view of the map
      out = out.copy()
    self._release(start, nbytes)
    return out

  def _release(self, start: int, nbytes: int) -> None:
    """Drops a read tensor's pages from this process's resident memory.

    Pages of a mapped file count as resident until unmapped, so a whole-model load would
    also hold the whole file (the embedded SmolLM2 GGUF: 683-690 MB peak against the
    model plus its largest array, 621 MB). They stay in the page cache; a later read maps
    them again.
    """
    if hasattr(mmap, "MADV_DONTNEED"):  # Linux and most Unixes; elsewhere kept mapped
      first = start - start % mmap.PAGESIZE
      self._map.madvise(mmap.MADV_DONTNEED, first, start + nbytes - first)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation: [heads*H, D] interleaved -> HF rotate-half.

  llama.cpp's convert script applies
  `w.reshape(n, 2, H/2, D).swapaxes(1, 2).reshape(n*H, D)`; this is its inverse.
  """
  rows = w.shape[0]
  return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


class GGUFSource(TensorSource):
  """A GGUF file's tensors under HF names, in HF layout (dequantised on access)."""

  def __init__(self, f: GGUFFile, config: DecoderConfig, permuted_qk: bool):
    self._f = f
    self._config = config
    self._permuted_qk = permuted_qk
    self._hf_to_gguf: dict[str, str] = {}
    layered = {k: v for k, v in _GGUF_TO_HF.items() if "{i}" in k}
    for name in f.tensors:
      if name in _GGUF_TO_HF:
        self._hf_to_gguf[_GGUF_TO_HF[name]] = name
      elif name.startswith("blk."):
        layer, _, rest = name[4:].partition(".")
        key = "blk.{i}." + rest
        if key in layered and layer.isdigit():
          self._hf_to_gguf[layered[key].format(i=int(layer))] = name

  def names(self) -> set[str]:
    return set(self._hf_to_gguf)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._f.tensors[self._hf_to_gguf[name]][1]

  def where(self, name: str) -> str:
    return self._f.path

  def get(self, name: str) -> np.ndarray:
    gname = self._hf_to_gguf.get(name)
    if gname is None:
      raise LoadError(f"{self._f.path}: missing tensor {name!r}")
    try:
      w = self._f.dequantize(gname)
    except LoadError:
      raise
    except (ValueError, TypeError) as e:
      raise LoadError(f"{self._f.path}: tensor {gname!r} ({name!r}): {e}") from e
    if self._permuted_qk and gname.endswith((".attn_q.weight", ".attn_k.weight")):
      heads = self._config.num_heads if ".attn_q." in gname else self._config.num_kv_heads
      if w.ndim != 2 or w.shape[0] % (2 * heads):
        raise LoadError(f"{self._f.path}: tensor {gname!r} ({name!r}) has shape"
                        f" {list(w.shape)}, cannot un-permute for {heads} heads")
      w = unpermute_qk(w, heads)
    return w


# Architectures whose q/k rows llama.cpp permutes (LlamaModel.modify_tensors); Qwen's are not.
_PERMUTED_QK = {"llama"}


def gguf_config(f: GGUFFile, **overrides: Any) -> DecoderConfig:
  """DecoderConfig from GGUF metadata ('{arch}.*' and 'tokenizer.ggml.*' keys)."""
  m = f.metadata
  arch = m.get("general.architecture")
  if arch not in ("llama", "qwen2", "qwen3"):
    raise LoadError(f"{f.path}: general.architecture {arch!r} is not supported;"
                    " supported: ['llama', 'qwen2', 'qwen3']")

  def need(key: str) -> Any:
    full = f"{arch}.{key}"
    if full not in m:
      raise LoadError(f"{f.path}: missing metadata field {full!r}")
    return m[full]

  n_heads = int(need("attention.head_count"))
  hidden = int(need("embedding_length"))
  n_kv = m.get(f"{arch}.attention.head_count_kv", n_heads)
  head_dim = m.get(f"{arch}.attention.key_length") or hidden // n_heads
  tokens = m.get("tokenizer.ggml.tokens")
  vocab = m.get(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
  if vocab is None:
    raise LoadError(f"{f.path}: missing metadata field {arch + '.vocab_size'!r}")
  scaling = None
  stype = m.get(f"{arch}.rope.scaling.type")
  if stype == "linear":
    scaling = RopeScaling("linear", factor=float(m[f"{arch}.rope.scaling.factor"]))
  elif stype not in (None, "none"):
    raise LoadError(f"{f.path}: {arch}.rope.scaling.type {stype!r} is not supported")
  if "rope_freqs.weight" in f.tensors:
    raise LoadError(f"{f.path}: tensor 'rope_freqs.weight' (llama3 RoPE factors) is not"
                    " supported; load the HF checkpoint instead")
  eos = m.get("tokenizer.ggml.eos_token_id")
  eos_ids = () if eos is None else (int(eos),)
  pad = m.get("tokenizer.ggml.padding_token_id", eos)
  fields = dict(
      model_type=arch,
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(need("feed_forward_length")),
      num_layers=int(need("block_count")),
      num_heads=n_heads,
      num_kv_heads=int(n_kv),
      head_dim=int(head_dim),
      rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
      rope_theta=float(m.get(f"{arch}.rope.freq_base", 10000.0)),
      rope_scaling=scaling,
      attention_bias="blk.0.attn_q.bias" in f.tensors,
      qk_norm=arch == "qwen3",
      tie_word_embeddings="output.weight" not in f.tensors,
      max_position_embeddings=int(m.get(f"{arch}.context_length", 4096)),
      bos_token_id=m.get("tokenizer.ggml.bos_token_id"),
      eos_token_ids=eos_ids,
      pad_token_id=int(pad if pad is not None else 0),
  )
  fields.update(overrides)
  try:
    return DecoderConfig(**fields)
  except ConfigError as e:
    raise LoadError(f"{f.path}: {e}") from e


def load_gguf_params(f: GGUFFile, config: DecoderConfig, *, mesh: Mesh | None = None,
                     rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES) -> Any:
  """Our params tree from a parsed GGUF file (dequantised, q/k un-permuted, placed)."""
  source = GGUFSource(f, config, permuted_qk=config.model_type in _PERMUTED_QK)
  # One reader thread: two loaded the embedded SmolLM2 no faster (3.2 s a process either
  # way), and with two the load's peak was higher and spread wider (fsdp-8: 600-613 MB in 8
  # runs, 622 in one CI-like run, against 597-605 in 9 runs with one thread; not attributed
  # further); tests/models/test_sharded_load.py holds it under the model plus its largest
  # array, 621 MB.
  return assemble_params(source, config, mesh=mesh, rules=rules, num_threads=1)


