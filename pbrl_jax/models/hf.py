"""Hugging Face checkpoints <-> our stacked parameter tree, without torch.

Axis letters as in `decoder.py`: L layers, D model dim, N query heads, K kv heads, H head dim,
F ffw dim, V vocab.

HF stores one tensor per layer in `nn.Linear` layout ([out, in]); we store one array per weight
with a leading L axis, in einsum-friendly layouts:

  HF name (per layer i)                       HF shape   ours (under params['layers'])
  model.layers.i.self_attn.q_proj.weight      [N*H, D]   attn.q_proj      [L, D, N, H]
  model.layers.i.self_attn.k_proj.weight      [K*H, D]   attn.k_proj      [L, D, K, H]
  model.layers.i.self_attn.v_proj.weight      [K*H, D]   attn.v_proj      [L, D, K, H]
  model.layers.i.self_attn.o_proj.weight      [D, N*H]   attn.o_proj      [L, N, H, D]
  model.layers.i.self_attn.{q,k,v}_proj.bias  [N*H]      attn.{q,k,v}_bias [L, N|K, H]
  model.layers.i.self_attn.{q,k}_norm.weight  [H]        attn.{q,k}_norm.scale [L, H]
  model.layers.i.mlp.{gate,up}_proj.weight    [F, D]     mlp.{gate,up}_proj [L, D, F]
  model.layers.i.mlp.down_proj.weight         [D, F]     mlp.down_proj    [L, F, D]
  model.layers.i.input_layernorm.weight       [D]        input_norm.scale [L, D]
  model.layers.i.post_attention_layernorm.weight [D]     post_attn_norm.scale [L, D]
  model.embed_tokens.weight                   [V, D]     embed            [V, D]
  model.norm.weight                           [D]        final_norm.scale [D]
  lm_head.weight (untied only)                [V, D]     lm_head          [D, V]

Safetensors files are read through their header and a read-only memory map, so bf16 (via
ml_dtypes) works and a tensor is only read when it is converted. With a mesh, each stacked weight
is `device_put` straight into its NamedSharding, so no device ever holds more than its shard.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import json
import math
import os
import shutil
import struct
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh

from pbrl_jax.models import decoder, sharding
from pbrl_jax.models.config import ConfigError, DecoderConfig

Params = Any


class LoadError(ValueError):
  """A checkpoint that cannot be loaded; the message names the file and the tensor or field."""


# ---------------------------------------------------------------------------------------------
# Name mapping.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One HF tensor and where it lives in our tree.

  Attributes:
    hf_name: HF tensor name; '{i}' stands for the layer index in per-layer tensors.
    path: keys into our params tree.
    hf_shape: the shape HF stores.
    shape: our shape of one layer's slice (the whole array when not per layer).
    to_ours: HF-layout array -> our per-layer layout.
    to_hf: our per-layer layout -> HF-layout array.
    per_layer: stacked over L in our tree.
  """

  hf_name: str
  path: tuple[str, ...]
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  per_layer: bool = True


def tensor_specs(config: DecoderConfig) -> list[TensorSpec]:
  """Every tensor of the HF checkpoint of `config`, in a fixed order."""
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
  same = lambda x: x
  t = lambda x: x.T

  def in_proj(heads: int) -> tuple[Callable, Callable]:
    # [heads*H, D] <-> [D, heads, H]
    return (lambda w: w.T.reshape(d, heads, h)), (lambda w: w.reshape(d, heads * h).T)

  def bias(heads: int) -> tuple[Callable, Callable]:
    return (lambda b: b.reshape(heads, h)), (lambda b: b.reshape(heads * h))

  p = "model.layers.{i}."
  specs = [
      TensorSpec("model.embed_tokens.weight", ("embed",), (v, d), (v, d), same, same, False),
      TensorSpec("model.norm.weight", ("final_norm", "scale"), (d,), (d,), same, same, False),
      TensorSpec(p + "input_layernorm.weight", ("layers", "input_norm", "scale"), (d,), (d,), same,
                 same),
      TensorSpec(p + "post_attention_layernorm.weight", ("layers", "post_attn_norm", "scale"),
                 (d,), (d,), same, same),
      TensorSpec(p + "self_attn.q_proj.weight", ("layers", "attn", "q_proj"), (n * h, d), (d, n, h),
                 *in_proj(n)),
      TensorSpec(p + "self_attn.k_proj.weight", ("layers", "attn", "k_proj"), (k * h, d), (d, k, h),
                 *in_proj(k)),
      TensorSpec(p + "self_attn.v_proj.weight", ("layers", "attn", "v_proj"), (k * h, d), (d, k, h),
                 *in_proj(k)),
      TensorSpec(p + "self_attn.o_proj.weight", ("layers", "attn", "o_proj"), (d, n * h), (n, h, d),
                 lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T),
      TensorSpec(p + "mlp.gate_proj.weight", ("layers", "mlp", "gate_proj"), (f, d), (d, f), t, t),
      TensorSpec(p + "mlp.up_proj.weight", ("layers", "mlp", "up_proj"), (f, d), (d, f), t, t),
      TensorSpec(p + "mlp.down_proj.weight", ("layers", "mlp", "down_proj"), (d, f), (f, d), t, t),
  ]
  if config.attention_bias:
    for name, heads in (("q", n), ("k", k), ("v", k)):
      specs.append(TensorSpec(p + f"self_attn.{name}_proj.bias", ("layers", "attn", f"{name}_bias"),
                              (heads * h,), (heads, h), *bias(heads)))
  if config.qk_norm:
    for name in ("q", "k"):
      specs.append(TensorSpec(p + f"self_attn.{name}_norm.weight",
                              ("layers", "attn", f"{name}_norm", "scale"), (h,), (h,), same, same))
  if not config.tie_word_embeddings:
    specs.append(TensorSpec("lm_head.weight", ("lm_head",), (v, d), (d, v), t, t, False))
  return specs


def _get_path(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set_path(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# ---------------------------------------------------------------------------------------------
# Reading safetensors (header + memory map; no torch, bf16 included).
# ---------------------------------------------------------------------------------------------

_ST_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


class TensorSource(abc.ABC):
  """HF-named tensors in HF layout, read lazily; every error names the file and the tensor.

  An interface: the safetensors and GGUF readers implement `names` and `get`.
  """

  @abc.abstractmethod
  def names(self) -> set[str]:
    """Every tensor name the source holds."""

  @abc.abstractmethod
  def get(self, name: str) -> np.ndarray:
    """Tensor `name` as a numpy array in HF layout."""

  @abc.abstractmethod
  def shape(self, name: str) -> tuple[int, ...]:
    """The HF-layout shape of `name`, from the header (no data read)."""

  @abc.abstractmethod
  def where(self, name: str) -> str:
    """The file that holds (or should hold) `name`, for error messages."""


class SafetensorsSource(TensorSource):
  """One or many safetensors files, indexed from their headers.

  Each `get` reads one tensor into a fresh array (not a memory map: the pages of a mapped
  file count in the process's resident memory until it is unmapped, so a whole-model load
  would look, and be accounted, like a second copy of the model).
  """

  def __init__(self, files: Sequence[str], missing_file: str):
    self._missing_file = missing_file
    self._entries: dict[str, tuple[str, Any, tuple[int, ...], int, int]] = {}
    for path in files:
      self._index_file(path)

  def _index_file(self, path: str) -> None:
    try:
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
          raise LoadError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
          raise LoadError(f"{path}: corrupt or truncated safetensors header (header length"
                          f" {header_len} > file size {size})")
        header = json.loads(f.read(header_len))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
      raise LoadError(f"{path}: cannot read safetensors header: {e}") from e
    if not isinstance(header, dict):
      raise LoadError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    base = 8 + header_len
    for name, info in header.items():
      try:
        dtype = _ST_DTYPES[info["dtype"]]
        shape = tuple(int(s) for s in info["shape"])
        start, end = (int(o) for o in info["data_offsets"])
      except (KeyError, TypeError, ValueError) as e:
        raise LoadError(f"{path}: tensor {name!r}: corrupt header entry {info!r}") from e
      if end - start != math.prod(shape) * np.dtype(dtype).itemsize:
        raise LoadError(f"{path}: tensor {name!r}: data size {end - start} bytes does not match"
                        f" dtype {info['dtype']} and shape {list(shape)}")
      if base + end > size:
        raise LoadError(f"{path}: tensor {name!r}: truncated file (tensor ends at byte"
                        f" {base + end}, file has {size})")
      self._entries[name] = (path, dtype, shape, base + start, base + end)

  def names(self) -> set[str]:
    return set(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._entries[name][2]

  def where(self, name: str) -> str:
    entry = self._entries.get(name)
    return entry[0] if entry else self._missing_file

  def get(self, name: str) -> np.ndarray:
    if name not in self._entries:
      raise LoadError(f"{self._missing_file}: missing tensor {name!r}")
    path, dtype, shape, start, end = self._entries[name]
    try:
      data = np.fromfile(path, dtype=np.uint8, count=end - start, offset=start)
    except OSError as e:
      raise LoadError(f"{path}: tensor {name!r}: cannot read: {e}") from e
    if data.size != end - start:  # the file shrank after its header was read
      raise LoadError(f"{path}: tensor {name!r}: truncated file (read {data.size} of"
                      f" {end - start} bytes)")
    return data.view(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Assembling our params tree from any TensorSource.
# ---------------------------------------------------------------------------------------------


def assemble_params(source: TensorSource, config: DecoderConfig, *, mesh: Mesh | None = None,
                    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
                    num_threads: int | None = None) -> Params:
  """Builds our params tree from HF-named tensors, checking every name and shape.

  Each stacked weight is filled in host memory ([L, ...] in config.param_dtype) and then
  placed: with a mesh, straight into its NamedSharding; otherwise on the default device.

  Args:
    source: the tensors, HF names and layouts.
    config: the architecture (its param_dtype is the stored dtype).
    mesh: optional mesh to shard onto.
    rules: logical axis rules for the mesh.
    num_threads: host threads converting tensors (numpy releases the GIL).

  Returns:
    The params tree of jax arrays.

  Raises:
    LoadError: a tensor is missing or has the wrong shape; names the file and the tensor.
  """
  specs = tensor_specs(config)
  jobs = [(s, i) for s in specs for i in (range(config.num_layers) if s.per_layer else [None])]
  have = source.names()
  missing = [s.hf_name.format(i=i) for s, i in jobs if s.hf_name.format(i=i) not in have]
  if missing:
    raise LoadError(f"{source.where(missing[0])}: missing tensor {missing[0]!r}"
                    f" ({len(missing)} missing in all)")
  # Every shape is checked from the headers before any data is read.
  for spec, i in jobs:
    name = spec.hf_name.format(i=i)
    shape = tuple(source.shape(name))
    if shape != spec.hf_shape:
      raise LoadError(f"{source.where(name)}: tensor {name!r} has shape {list(shape)},"
                      f" expected {list(spec.hf_shape)}")

  dtype = config.jnp_param_dtype
  if mesh is not None:
    shapes = decoder.param_shapes(config)
    shardings = sharding.param_shardings(decoder.param_logical_axes(config), shapes, mesh, rules)
    # Each device takes its own slice of the host buffer: with several hosts, every host
    # places only its addressable shards (the buffer is the same file on every host).
    place = lambda path, buf: jax.make_array_from_callback(
        buf.shape, _get_path(shardings, path), lambda index: buf[index])
  else:
    place = lambda path, buf: jax.device_put(buf)

  def read(spec: TensorSpec, i: int | None) -> np.ndarray:
    """Tensor `spec` (layer i) in our layout, a view of the array read where the layout
    allows."""
    name = spec.hf_name.format(i=i)
    array = source.get(name)
    if tuple(array.shape) != spec.hf_shape:  # a source whose data disagrees with its header
      raise LoadError(f"{source.where(name)}: tensor {name!r} has shape {list(array.shape)},"
                      f" expected {list(spec.hf_shape)}")
    return spec.to_ours(array)

  def fill(buf: np.ndarray, spec: TensorSpec, i: int) -> None:
    buf[i] = read(spec, i)

  # One weight at a time: read it (a stacked one into a host buffer, its layers on threads),
  # place it, drop the host copy. The largest weights go first: a weight's host copies (the
  # array read, and its slices on their way to the devices) coexist with every weight placed
  # before it, so this order makes the peak the placed model plus the copies of the small
  # weights placed last. (In file order the untied head, often the largest, came last.)
  params: dict[str, Any] = {}
  num_threads = num_threads or min(8, os.cpu_count() or 1)
  by_size = sorted(specs, key=lambda s: -math.prod(s.shape) * (config.num_layers
                                                                if s.per_layer else 1))
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for spec in by_size:
      if spec.per_layer:
        buf = np.empty((config.num_layers,) + spec.shape, dtype)
        for future in [pool.submit(fill, buf, spec, i) for i in range(config.num_layers)]:
          future.result()
      else:  # placed from the array read: no second host copy of the embedding or head
        buf = np.asarray(read(spec, None)).astype(dtype, copy=False)
      _set_path(params, spec.path, place(spec.path, buf))
      del buf
  return params


# ---------------------------------------------------------------------------------------------
# Loading an HF directory.
# ---------------------------------------------------------------------------------------------


def read_hf_config(model_dir: str, **overrides: Any) -> DecoderConfig:
  """DecoderConfig from `model_dir/config.json`; LoadError names the file and the field."""
  path = os.path.join(model_dir, "config.json")
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise LoadError(f"{path}: cannot read config: {e}") from e
  try:
    return DecoderConfig.from_hf_dict(d, source=path, **overrides)
  except ConfigError as e:
    raise LoadError(str(e)) from e


def safetensors_files(model_dir: str) -> tuple[list[str], str]:
  """(the safetensors files of an HF directory, the file named in 'missing tensor' errors)."""
  index = os.path.join(model_dir, "model.safetensors.index.json")
  if os.path.isfile(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
      raise LoadError(f"{index}: cannot read the safetensors index: {e}") from e
    files = [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]
    for path in files:
      if not os.path.isfile(path):
        raise LoadError(f"{index}: lists {os.path.basename(path)}, which does not exist")
    return files, index
  single = os.path.join(model_dir, "model.safetensors")
  if os.path.isfile(single):
    return [single], single
  found = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
  if len(found) == 1:
    path = os.path.join(model_dir, found[0])
    return [path], path
  raise LoadError(f"{model_dir}: no model.safetensors or model.safetensors.index.json"
                  f" (found {found})")


def load_hf_params(model_dir: str, config: DecoderConfig, *, mesh: Mesh | None = None,
                   rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES) -> Params:
  """Our params tree from the safetensors of an HF directory."""
  files, missing_file = safetensors_files(model_dir)
  return assemble_params(SafetensorsSource(files, missing_file), config, mesh=mesh, rules=rules)


# ---------------------------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------------------------


def hf_state_dict(params: Params, config: DecoderConfig, dtype: Any = "float32"
                  ) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, HF-layout host array) for every tensor, one at a time, in `dtype`."""
  np_dtype = np.dtype(dtype)
  for spec in tensor_specs(config):
    stacked = np.asarray(jax.device_get(_get_path(params, spec.path)))
    if spec.per_layer:
      for i in range(config.num_layers):
        yield (spec.hf_name.format(i=i),
               np.ascontiguousarray(spec.to_hf(stacked[i]).astype(np_dtype)))
    else:
      yield spec.hf_name, np.ascontiguousarray(spec.to_hf(stacked).astype(np_dtype))


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes a safetensors file from numpy arrays (bf16 included), without torch."""
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, a in tensors.items():
    header[name] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in tensors.values():
      f.write(a.tobytes())


def _generation_config(config: DecoderConfig) -> dict[str, Any]:
  eos = list(config.eos_token_ids)
  return {
      "bos_token_id": config.bos_token_id,
      "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
      "pad_token_id": config.pad_token_id,
      "do_sample": False,
  }


def export_hf(model: Any, out_dir: str, dtype: str = "float32",
              max_shard_bytes: int = 4 * 1024**3) -> str:
  """Writes an HF directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

  Writes safetensors (sharded with `model.safetensors.index.json` past `max_shard_bytes`),
  config.json, generation_config.json and the tokenizer files (with the chat template), into a
  temporary directory next to `out_dir` that is then renamed into place, so a reader never sees
  a half-written directory.

  Args:
    model: a ModelBundle, or a (params, config, tokenizer-or-None) tuple.
    out_dir: the directory to create (replaced if it exists).
    dtype: dtype of the written tensors ('float32', 'bfloat16', 'float16').
    max_shard_bytes: largest safetensors file before the checkpoint is split.

  Returns:
    out_dir.
  """
  if isinstance(model, tuple):
    params, config, tokenizer = model
  else:
    params, config, tokenizer = model.params, model.config, model.tokenizer
  np_dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".tmp-", dir=parent)
  try:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    total = 0
    for name, a in hf_state_dict(params, config, np_dtype):
      if shards[-1] and size + a.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][name] = a
      size += a.nbytes
      total += a.nbytes
    if len(shards) == 1:
      write_safetensors(os.path.join(tmp, "model.safetensors"), shards[0])
    else:
      weight_map = {}
      for j, shard in enumerate(shards):
        fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(tmp, fname), shard)
        weight_map.update({name: fname for name in shard})
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf_config = config.to_hf_dict()
    hf_config["torch_dtype"] = hf_config["dtype"] = str(np.dtype(np_dtype).name)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
      json.dump(_generation_config(config), f, indent=2)
    if tokenizer is not None:
      tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
      old = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".old-", dir=parent)
      os.rename(out_dir, os.path.join(old, "x"))
      os.rename(tmp, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, out_dir)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return out_dir
