"""LoRA adapters: a separate, trainable low-rank param tree next to the frozen decoder params.

Axis letters as in `decoder.py` (L layers, D model dim, N query heads, K kv heads, H head dim,
F ffw dim), plus R, the LoRA rank.

For a targeted projection with kernel W (input dims I, output dims O), the adapted kernel is

  W' = W + (alpha / R) * A @ B,   A [I, R],  B [R, O]

(Hu et al. 2021, arXiv 2106.09685, eq. 3; `alpha / R` is PEFT's `lora_alpha / r`). A is
random normal with std 1/sqrt(d_in) and B is zero, so a fresh adapter leaves the model
unchanged. The adapters are stacked over L like the decoder params, and A and B keep the
kernel's own factored input / output dims, so each dimension has a logical axis name and
shards like the kernel it adapts:

  target      kernel (under params['layers'])   A              B
  q_proj      attn.q_proj    [L, D, N, H]        [L, D, R]      [L, R, N, H]
  k_proj      attn.k_proj    [L, D, K, H]        [L, D, R]      [L, R, K, H]
  v_proj      attn.v_proj    [L, D, K, H]        [L, D, R]      [L, R, K, H]
  o_proj      attn.o_proj    [L, N, H, D]        [L, N, H, R]   [L, R, D]
  gate_proj   mlp.gate_proj  [L, D, F]           [L, D, R]      [L, R, F]
  up_proj     mlp.up_proj    [L, D, F]           [L, D, R]      [L, R, F]
  down_proj   mlp.down_proj  [L, F, D]           [L, F, R]      [L, R, D]

Flattening the factored dims row-major (N, H -> N*H) gives exactly the [d_in, R] @ [R, d_out]
product of the HF `nn.Linear` layout (`hf.tensor_specs` flattens heads the same way).

The adapter tree mirrors the decoder tree: `{'layers': {'attn': {'q_proj': {'a': A, 'b': B}},
'mlp': {...}}}`.

Two ways to run the adapted model. Training, scoring, sampling and evaluation pass the
adapters to `decoder.forward(base, ..., lora=adapters, lora_scale=alpha / rank)`, which adds
scale * ((x A) B) inside each targeted projection: the adapted kernel W' is never built, so
LoRA costs the adapters, their optimizer state and per-token (x A) activations, no copy of the
weights. `apply_lora` builds W' = W + scale A B explicitly, for export
(`merge_and_export`) and for the parity tests of the unmerged path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pbrl_jax.models import decoder
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.models.hf import export_hf

Array = jax.Array
Params = Any

RANK_AXIS = "lora_rank"


@dataclasses.dataclass(frozen=True)
class _Target:
  """Where one adaptable kernel lives and how its dims split into input and output.

  Attributes:
    path: keys under params['layers'].
    num_in: how many kernel dims (after L) are input dims; the rest are output dims.
  """

  path: tuple[str, ...]
  num_in: int


TARGETS: dict[str, _Target] = {
    "q_proj": _Target(("attn", "q_proj"), 1),
    "k_proj": _Target(("attn", "k_proj"), 1),
    "v_proj": _Target(("attn", "v_proj"), 1),
    "o_proj": _Target(("attn", "o_proj"), 2),
    "gate_proj": _Target(("mlp", "gate_proj"), 1),
    "up_proj": _Target(("mlp", "up_proj"), 1),
    "down_proj": _Target(("mlp", "down_proj"), 1),
}
ALL_TARGETS = tuple(TARGETS)

# Einsum of the merged delta per target: A [L, I..., R], B [L, R, O...] -> [L, I..., O...].
_MERGE_EINSUM = {1: {2: "LDR,LRNH->LDNH", 1: "LDR,LRF->LDF"}, 2: {1: "LNHR,LRD->LNHD"}}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Static LoRA settings: which kernels are adapted, R, and alpha (scale = alpha / R).

  Attributes:
    rank: R, >= 1.
    alpha: LoRA alpha.
    targets: names from `ALL_TARGETS`.
  """

  rank: int
  alpha: float
  targets: tuple[str, ...] = ALL_TARGETS

  def __post_init__(self):
    _check(self.targets, self.rank)


def _check(targets: Sequence[str], rank: int) -> tuple[str, ...]:
  targets = tuple(targets)
  unknown = [t for t in targets if t not in TARGETS]
  if unknown or not targets:
    raise ValueError(f"lora targets: {unknown or 'none given'}; choose from {ALL_TARGETS}")
  if len(set(targets)) != len(targets):
    raise ValueError(f"lora targets: duplicates in {targets}")
  if rank < 1:
    raise ValueError(f"lora rank: must be >= 1, got {rank}")
  return targets


def _get(tree: Any, path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _kernel_info(config: DecoderConfig) -> tuple[Any, Any]:
  """(kernel shapes, kernel logical axes) of the decoder's 'layers' subtree, abstractly."""
  return (decoder.param_shapes(config)["layers"],
          decoder.param_logical_axes(config)["layers"])


def init_lora(config: DecoderConfig, targets: Sequence[str], rank: int, rng: Array,
              dtype: Any = jnp.float32) -> Params:
  """Fresh adapters: A ~ Normal(0, 1/d_in), B = 0.

  Args:
    config: the decoder architecture.
    targets: names from `ALL_TARGETS`.
    rank: R.
    rng: PRNG key.
    dtype: dtype of A and B (float32: adapters are small, keep them exact).

  Returns:
    {'layers': {...: {'a': [L, I..., R], 'b': [L, R, O...]}}}.
  """
  targets = _check(targets, rank)
  shapes, _ = _kernel_info(config)
  out: dict[str, Any] = {}
  for name, rng_t in zip(targets, jax.random.split(rng, len(targets))):
    t = TARGETS[name]
    shape = _get(shapes, t.path).shape  # [L, I..., O...]
    in_dims, out_dims = shape[1:1 + t.num_in], shape[1 + t.num_in:]
    d_in = math.prod(in_dims)
    a = jax.random.normal(rng_t, (shape[0], *in_dims, rank), jnp.float32) / math.sqrt(d_in)
    b = jnp.zeros((shape[0], rank, *out_dims), dtype)
    _set(out, ("layers",) + t.path, {"a": a.astype(dtype), "b": b})
  return out


def lora_logical_axes(config: DecoderConfig, targets: Sequence[str], rank: int) -> Params:
  """Logical PartitionSpecs of the adapter tree: the kernel's names plus 'lora_rank'."""
  targets = _check(targets, rank)
  _, axes = _kernel_info(config)
  out: dict[str, Any] = {}
  for name in targets:
    t = TARGETS[name]
    names = tuple(_get(axes, t.path))  # ('layers', in names..., out names...)
    a = P(names[0], *names[1:1 + t.num_in], RANK_AXIS)
    b = P(names[0], RANK_AXIS, *names[1 + t.num_in:])
    _set(out, ("layers",) + t.path, {"a": a, "b": b})
  return out


def lora_shapes(config: DecoderConfig, targets: Sequence[str], rank: int,
                dtype: Any = jnp.float32) -> Params:
  """Pytree of jax.ShapeDtypeStruct of the adapters, without allocating."""
  return jax.eval_shape(lambda: init_lora(config, targets, rank, jax.random.PRNGKey(0), dtype))


def lora_delta(a: Array, b: Array, scale: float) -> Array:
  """scale * A @ B in the kernel's layout, computed in float32: [L, I..., R], [L, R, O...]."""
  eq = _MERGE_EINSUM[a.ndim - 2][b.ndim - 2]
  return scale * jnp.einsum(eq, a.astype(jnp.float32), b.astype(jnp.float32),
                            precision=jax.lax.Precision.HIGHEST)


def apply_lora(base_params: Params, lora_params: Params, alpha: float, rank: int) -> Params:
  """Merged decoder params: W + (alpha / rank) A @ B for every adapted kernel.

  The whole base is wrapped in `stop_gradient`, so it stays frozen even if a caller
  differentiates with respect to it; gradients reach the adapters only. Kernels without an
  adapter are passed through unchanged. Each merged kernel is computed in float32 and cast
  back to the base kernel's dtype.

  Args:
    base_params: decoder params (frozen).
    lora_params: adapters from `init_lora` (any subset of `ALL_TARGETS`).
    alpha: LoRA alpha.
    rank: R; must match the adapters' shapes.

  Returns:
    A params tree with the structure of `base_params`.
  """
  known = {t.path for t in TARGETS.values()}
  given = {(g, k) for g, sub in lora_params["layers"].items() for k in sub}
  if given - known:
    raise ValueError(f"lora: adapters for unknown kernels {sorted(given - known)}")
  scale = alpha / rank
  base_params = jax.lax.stop_gradient(base_params)
  layers = dict(base_params["layers"])
  for name, t in TARGETS.items():
    adapter = lora_params["layers"].get(t.path[0], {}).get(t.path[1])
    if adapter is None:
      continue
    a, b = adapter["a"], adapter["b"]
    if a.shape[-1] != rank or b.shape[1] != rank:
      raise ValueError(f"lora {name}: adapter rank {a.shape[-1]} / {b.shape[1]} != {rank}")
    w = _get(layers, t.path)
    merged = (w.astype(jnp.float32) + lora_delta(a, b, scale)).astype(w.dtype)
    group = dict(layers[t.path[0]])
    group[t.path[1]] = merged
    layers[t.path[0]] = group
  out = dict(base_params)
  out["layers"] = layers
  return out


def merge_and_export(base_params: Params, lora_params: Params, config: DecoderConfig,
                     tokenizer: Any, out_dir: str, *, alpha: float, rank: int,
                     dtype: str = "float32", max_shard_bytes: int = 4 * 1024**3) -> str:
  """Merges the adapters into the base and writes an HF directory (`hf.export_hf`).

  The result is a plain checkpoint of the adapted model: transformers loads it with
  `AutoModelForCausalLM.from_pretrained` and needs no PEFT.

  Args:
    base_params: decoder params.
    lora_params: adapters.
    config: the decoder architecture.
    tokenizer: saved with the weights (or None).
    out_dir: the directory to write (replaced atomically if it exists).
    alpha: LoRA alpha.
    rank: R.
    dtype: dtype of the written tensors.
    max_shard_bytes: largest safetensors file before the checkpoint is split.

  Returns:
    out_dir.
  """
  merged = jax.jit(apply_lora, static_argnums=(2, 3))(base_params, lora_params, alpha, rank)
  return export_hf((merged, config, tokenizer), out_dir, dtype=dtype,
                   max_shard_bytes=max_shard_bytes)
