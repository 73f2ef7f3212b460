"""Memory planner: predicted bytes per device of a GRPO/PPO run, and whether it fits.

Axis letters as in `pbrl_jax/models/decoder.py`: B batch (sequences), T sequence, S cache
length, L layers, D model dim, N query heads, K kv heads, H head dim, F ffw dim, V vocab.

The core is `plan(inputs, device)`, a pure function of a small `PlanInputs` dataclass and a
`DeviceSpec`; the `pbrl-plan` CLI adapts a training config or a model config.json to it.

What is counted, per device (sharded tensors are divided by their mesh axes exactly as
`pbrl_jax.models.sharding.DEFAULT_RULES` splits them; a dimension the axes do not divide is
replicated, as there):

* policy params, in `param_dtype`;
* LoRA adapters (fp32) when `lora_rank > 0`; the base is then frozen and shared with the
  reference policy, so no reference copy is held;
* reference params (full fine-tuning with `reference=True`, for the KL term), `param_dtype`;
* value head (PPO) params, grads and moments: D + 1 floats each;
* grads of the trainable params (their dtype), plus one fp32 accumulator when the update is
  split into micro-batches, plus the all-reduce's buffer when params are replicated over
  'data';
* AdamW state: two moments of every trainable param in `optimizer_dtype` (default fp32);
* rollout KV cache: 2 (k and v) x L x B*G x S x K x H x `kv_dtype`, S = prompt + completion;
* activations of the update step over one micro-batch of b sequences (below): P + M tokens
  each, or with shared prompts (`share_prompt`, the trainer's default) the prompt once
  per group (its own forward attending over its P positions only), plus the prompt's keys
  and values of every layer (once per group);
* logits [b, M, V] in fp32 over the M completion positions, or [b, M, K] with the model's
  `vocab_block` K: XLA keeps one buffer (the log-softmax gradient reuses it);
* scoring (forwards only, the whole batch): one layer's gathered weights and working set
  beside the repeated prompt keys and values, or one vocab block of the gathered
  unembedding and the logits (three copies when the policy's pass also takes entropies),
  whichever is larger;
* rollout decode working set: one layer's k/v read out of the cache (the cache itself is
  updated in place in the layer scan's carry) and, without FSDP, one layer's weights
  sliced out of the stacked params;
* with FSDP (fsdp > 1), the weights gathered just before use, in `param_dtype`, divided
  over tensor: one layer plus the unembedding rows of one vocab block (scoring and the
  update), or the whole unembedding (the sampler's full-vocabulary logits).

Activation model, per token and layer, c = bytes of the compute dtype. Without
rematerialisation (the decoder as it is today: `nn.scan` over layers saves every layer's
residuals for the backward pass) the saved bytes are
  c x (8 D + 6.5 F + 2.5 (N + K) H) + N x S x (c + 4),
the last term being the attention probabilities and the fp32 scores over S keys (P + M;
P for a shared prompt's own forward). The copy counts are
calibrated against XLA's buffer assignment for this decoder (fp32 on CPU, varying D, F, N,
K, T and L one at a time); they are what JAX's scan autodiff keeps: the norms' inputs,
fp32 internals and outputs (D), q/k/v and the attention output (heads x H), gate, up,
silu, its sigmoid and their product (F). The layer whose backward runs holds another
c x (3 D + 4 F) + 4 N S per token. With rematerialisation per layer (`nn.remat` inside the
scan: not yet in the decoder, so this line is a model, not checked against XLA) only the
layer input (D c) is saved per layer, and the running layer holds its full residuals too.
On TPU, bf16 compute keeps bf16 residuals (c = 2); on CPU, XLA upcasts bf16 and keeps extra
copies, so bf16 is not checked on CPU.

`pbrl_jax.plan_xla` compiles the trainer's own scoring and update programs and checks these
formulas against XLA (`pbrl-plan --check-xla`).

Not counted: XLA's own scratch and fragmentation (covered by `margin`), the host-side data
pipeline, the reward encoder (USE-sized encoders are a few hundred MB; add them to the margin), and
the sampler's per-step logits beyond one [B*G, V] fp32 row.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from pbrl_jax.models import decoder
from pbrl_jax.models import sharding as sharding_lib
from pbrl_jax.models.config import DecoderConfig

GiB = 1024 ** 3
LOGITS_COPIES = 1
# Scoring's policy pass takes entropies too: logits, log-softmax and probabilities are alive
# together (XLA's buffers for the small PPO run of docs/scaling.md: 224 MiB, as planned).
SCORING_ENTROPY_COPIES = 3
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class PlanError(ValueError):
  """Inputs the planner cannot use; the message names the field."""


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """One accelerator slice.

  Attributes:
    name: e.g. 'v5e-1'.
    hbm_bytes: memory of one device (chip).
    num_devices: devices in the slice (the mesh size).
  """

  name: str
  hbm_bytes: int
  num_devices: int


# Per-chip HBM of each kind; the number after the dash is the slice's chip count, except v4
# and v5p, whose names count TensorCores (2 per chip, one JAX device per chip).
DEVICES: dict[str, DeviceSpec] = {
    "v5e-1": DeviceSpec("v5e-1", 16 * GiB, 1),
    "v5e-4": DeviceSpec("v5e-4", 16 * GiB, 4),
    "v5e-8": DeviceSpec("v5e-8", 16 * GiB, 8),
    "v6e-1": DeviceSpec("v6e-1", 32 * GiB, 1),
    "v6e-4": DeviceSpec("v6e-4", 32 * GiB, 4),
    "v6e-8": DeviceSpec("v6e-8", 32 * GiB, 8),
    "v4-8": DeviceSpec("v4-8", 32 * GiB, 4),
    "v4-32": DeviceSpec("v4-32", 32 * GiB, 16),
    "v5p-8": DeviceSpec("v5p-8", 95 * GiB, 4),
    "v5p-64": DeviceSpec("v5p-64", 95 * GiB, 32),
    "v5p-512": DeviceSpec("v5p-512", 95 * GiB, 256),
    "v5e-256": DeviceSpec("v5e-256", 16 * GiB, 256),
    "v6e-256": DeviceSpec("v6e-256", 32 * GiB, 256),
    "h100": DeviceSpec("h100", 80 * 10 ** 9, 1),
    "h200": DeviceSpec("h200", 141 * 10 ** 9, 1),
}
DEVICE_ALIASES = {"v5litepod-1": "v5e-1", "v5litepod-4": "v5e-4", "v5litepod-8": "v5e-8",
                  "v5litepod-256": "v5e-256",
                  "h100-80gb": "h100", "h200-141gb": "h200"}


def device_spec(name: str, cpu_bytes: int | None = None) -> DeviceSpec:
  """Looks up a device kind; 'cpu' uses `cpu_bytes` (host RAM) as one device."""
  key = DEVICE_ALIASES.get(name.lower(), name.lower())
  if key == "cpu":
    if cpu_bytes is None:
      raise PlanError("device: 'cpu' needs the host memory size (cpu_bytes)")
    return DeviceSpec("cpu", int(cpu_bytes), 1)
  if key not in DEVICES:
    raise PlanError(f"device: unknown kind {name!r}; known: {sorted(DEVICES) + ['cpu']}")
  return DEVICES[key]


@dataclasses.dataclass(frozen=True)
class PlanInputs:
  """Everything the memory of one training run depends on.

  Attributes:
    model: architecture (its own dtype fields are ignored; the ones below are used).
    group_size: G, completions per prompt.
    prompts_per_step: B, prompts per global step; B*G sequences are sampled.
    max_prompt_len: prompt tokens (padded).
    max_completion_len: completion tokens (padded).
    micro_batch: sequences per update micro-batch (global); 0 means B*G (no accumulation).
    lora_rank: 0 for full fine-tuning, else the LoRA rank on `LORA_TARGETS`.
    param_dtype: storage dtype of the model weights.
    compute_dtype: matmul dtype.
    optimizer_dtype: dtype of both AdamW moments.
    kv_dtype: dtype of the rollout KV cache.
    remat: rematerialise each layer in the backward pass.
    reference: keep a frozen reference policy for the KL term.
    value_head: PPO critic head on the policy.
    share_prompt: the G rows of a prompt share its forward in scoring and the update
      (`rl.share_prompt`): the prompt then runs once per group.
    on_policy: scoring skips the policy forward (`stages.scores_policy`: on-policy or SFT).
    mesh: (data, fsdp, tensor); their product must equal the device count.
  """

  model: DecoderConfig
  group_size: int = 8
  prompts_per_step: int = 8
  max_prompt_len: int = 256
  max_completion_len: int = 512
  micro_batch: int = 0
  lora_rank: int = 0
  param_dtype: str = "bfloat16"
  compute_dtype: str = "bfloat16"
  optimizer_dtype: str = "float32"
  kv_dtype: str = "bfloat16"
  remat: bool = False
  reference: bool = True
  value_head: bool = False
  share_prompt: bool = False
  on_policy: bool = False
  mesh: tuple[int, int, int] = (1, 1, 1)

  def __post_init__(self):
    for name in ("group_size", "prompts_per_step", "max_prompt_len", "max_completion_len"):
      if int(getattr(self, name)) <= 0:
        raise PlanError(f"{name}: must be positive, got {getattr(self, name)}")
    if self.micro_batch < 0 or self.lora_rank < 0:
      raise PlanError("micro_batch and lora_rank: must be >= 0")
    for name in ("param_dtype", "compute_dtype", "optimizer_dtype", "kv_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise PlanError(f"{name}: unknown dtype {getattr(self, name)!r}") from e
    if len(self.mesh) != 3 or min(self.mesh) < 1:
      raise PlanError(f"mesh: expected (data, fsdp, tensor) >= 1, got {self.mesh}")
    if self.sequences % (self.mesh[0] * self.mesh[1]):
      raise PlanError(f"prompts_per_step*group_size = {self.sequences} is not divisible by"
                      f" data*fsdp = {self.mesh[0] * self.mesh[1]}")
    if self.update_batch % (self.mesh[0] * self.mesh[1]) or self.sequences % self.update_batch:
      raise PlanError(f"micro_batch: {self.update_batch} must divide B*G = {self.sequences}"
                      f" and be divisible by data*fsdp = {self.mesh[0] * self.mesh[1]}")

  @property
  def sequences(self) -> int:
    return self.prompts_per_step * self.group_size

  @property
  def prompt_group(self) -> int:
    """Rows per prompt forward: G with shared prompts, else 1 (`RLSpec.prompt_group`)."""
    return self.group_size if self.share_prompt else 1

  @property
  def update_batch(self) -> int:
    return self.micro_batch or self.sequences

  @property
  def seq_len(self) -> int:
    return self.max_prompt_len + self.max_completion_len

  def prompts(self, rows: int) -> int:
    """Prompt forwards behind `rows` sequences: one per group of `prompt_group` rows; a
    device holding part of a group still runs (and keeps) that group's whole prompt."""
    return -(-rows // self.prompt_group)

  def tokens(self, rows: int) -> int:
    """Tokens a forward over `rows` sequences runs (`steps.completion_outputs`)."""
    return self.prompts(rows) * self.max_prompt_len + rows * self.max_completion_len

  def model_config(self) -> DecoderConfig:
    return self.model.replace(param_dtype=self.param_dtype, dtype=self.compute_dtype,
                              remat=self.remat)


class _MeshShape:
  """Stands in for a Mesh where only axis sizes matter (no devices needed)."""

  def __init__(self, mesh: Sequence[int]):
    self.shape = dict(zip(sharding_lib.MESH_AXES, mesh))


def _nbytes(dtype: str | jnp.dtype) -> int:
  return jnp.dtype(dtype).itemsize


def _shard_elems(shape: Sequence[int], spec: P, mesh: Mapping[str, int]) -> int:
  n = 1
  for i, size in enumerate(shape):
    axes = spec[i] if i < len(spec) else None
    flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
    n *= size // int(np.prod([mesh[a] for a in flat])) if flat else size
  return n


@functools.lru_cache(maxsize=64)
def _param_elems_cached(config: DecoderConfig, mesh: tuple[int, ...]) -> tuple[int, int]:
  return _param_elems(config, mesh)


def param_elems_per_device(config: DecoderConfig, mesh: Sequence[int]) -> tuple[int, int]:
  """(elements per device, total elements) of the decoder params under DEFAULT_RULES."""
  return _param_elems_cached(config, tuple(mesh))


def _param_elems(config: DecoderConfig, mesh: Sequence[int]) -> tuple[int, int]:
  shapes = decoder.param_shapes(config)
  logical = decoder.param_logical_axes(config)
  fake = _MeshShape(mesh)
  per_device = 0
  for s, spec in zip(jax.tree.leaves(shapes),
                     jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))):
    mesh_spec = sharding_lib.logical_to_mesh_spec(spec, s.shape, fake)
    per_device += _shard_elems(s.shape, mesh_spec, fake.shape)
  return per_device, decoder.count_params(shapes)


def lora_elems_per_device(config: DecoderConfig, rank: int, mesh: Sequence[int]) -> int:
  """LoRA A [d_in, r] split like the base input dim, B [r, d_out] like its output dim."""
  if rank == 0:
    return 0
  _, fsdp, tensor = mesh
  c = config

  def split(size: int, ways: int) -> int:
    return size // ways if size % ways == 0 else size

  d, nh, kh, f = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, (
      c.intermediate_size)
  dims = {  # (d_in, sharded over fsdp?) x (d_out, sharded over tensor?)
      "q_proj": ((d, fsdp), (nh, tensor if c.num_heads % tensor == 0 else 1)),
      "k_proj": ((d, fsdp), (kh, tensor if c.num_kv_heads % tensor == 0 else 1)),
      "v_proj": ((d, fsdp), (kh, tensor if c.num_kv_heads % tensor == 0 else 1)),
      "o_proj": ((nh, tensor if c.num_heads % tensor == 0 else 1), (d, fsdp)),
      "gate_proj": ((d, fsdp), (f, tensor)),
      "up_proj": ((d, fsdp), (f, tensor)),
      "down_proj": ((f, tensor), (d, fsdp)),
  }
  per_layer = sum(rank * (split(i, wi) + split(o, wo)) for (i, wi), (o, wo) in dims.values())
  return per_layer * c.num_layers


# Copies saved per token and layer by the scan's backward (no remat), in the compute dtype,
# by tensor size; calibrated against XLA (see the module docstring).
SAVED_D_COPIES = 8.0
SAVED_F_COPIES = 6.5
SAVED_HEAD_COPIES = 2.5
# Working set of the one layer whose backward is running, per token.
WORK_D_COPIES = 3.0
WORK_F_COPIES = 4.0


def activation_bytes_per_token_layer(config: DecoderConfig, seq_len: int, compute_dtype: str,
                                     remat: bool, tensor: int = 1) -> tuple[float, float]:
  """(saved bytes per token per layer, working bytes per token of the layer in backward).

  Attention stores its fp32 scores and the probabilities (N x S per token, 4 + c bytes);
  the layer running its backward holds one fp32 score matrix more. Heads, ffw and vocab
  are divided over the tensor axis when it divides them. With `remat`, only the layer
  input is saved per layer, and the layer in backward is recomputed: its full residuals
  join its working set.
  """
  c = config
  cb = _nbytes(compute_dtype)

  def split(size: int) -> float:
    return size / tensor if size % tensor == 0 else size

  n, k, f = split(c.num_heads), split(c.num_kv_heads), split(c.intermediate_size)
  d, h = c.hidden_size, c.head_dim
  full = (cb * (SAVED_D_COPIES * d + SAVED_F_COPIES * f + SAVED_HEAD_COPIES * (n + k) * h)
          + n * seq_len * (cb + 4))
  work = cb * (WORK_D_COPIES * d + WORK_F_COPIES * f) + n * seq_len * 4
  if remat:
    return d * cb, full + work
  return full, work


def _forward_bytes(inputs: PlanInputs, rows: int, config: DecoderConfig, backward: bool,
                   tensor: int) -> float:
  """Activation bytes of the forward over `rows` sequences (`PlanInputs.tokens`).

  With `backward`: what every layer keeps for the backward pass plus the working set of the
  layer running it; without, one layer's working set. With shared prompts the prompt's own
  forward attends over its P positions and the completions' over P + M; unshared, every
  token attends over P + M.
  """
  c = config
  prompt_keys = inputs.max_prompt_len if inputs.prompt_group > 1 else inputs.seq_len
  total = 0.0
  for tokens, keys in ((inputs.prompts(rows) * inputs.max_prompt_len, prompt_keys),
                       (rows * inputs.max_completion_len, inputs.seq_len)):
    saved, work = activation_bytes_per_token_layer(c, keys, inputs.compute_dtype,
                                                   inputs.remat and backward, tensor)
    total += tokens * ((saved * c.num_layers if backward else 0) + work)
  return total


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device by component, the two phase peaks, and the verdict."""

  inputs: PlanInputs
  device: DeviceSpec
  components: dict[str, int]
  total_params: int
  rollout_peak: int
  update_peak: int
  margin: float
  score_peak: int = 0

  @property
  def peak(self) -> int:
    return max(self.rollout_peak, self.score_peak, self.update_peak)

  @property
  def budget(self) -> int:
    return int(self.device.hbm_bytes * (1.0 - self.margin))

  @property
  def fits(self) -> bool:
    return self.peak <= self.budget

  def table(self) -> str:
    """Human-readable report."""
    i = self.inputs
    mode = f"LoRA r={i.lora_rank}" if i.lora_rank else "full fine-tuning"
    lines = [
        f"device {self.device.name}: {self.device.num_devices} x"
        f" {self.device.hbm_bytes / GiB:.1f} GiB; mesh (data, fsdp, tensor) = {i.mesh}",
        f"model: {self.total_params / 1e9:.2f}B params, {mode}, params {i.param_dtype},"
        f" compute {i.compute_dtype}, AdamW moments {i.optimizer_dtype},"
        f" remat {'on' if i.remat else 'off'}",
        f"rollout: B={i.prompts_per_step} prompts x G={i.group_size}, prompt"
        f" {i.max_prompt_len} + completion {i.max_completion_len} tokens; update micro-batch"
        f" {i.update_batch} sequences",
        f"{'component':<22}{'GiB/device':>12}",
    ]
    for name, b in self.components.items():
      lines.append(f"{name:<22}{b / GiB:>12.3f}")
    lines += [
        f"{'rollout peak':<22}{self.rollout_peak / GiB:>12.3f}",
        f"{'scoring peak':<22}{self.score_peak / GiB:>12.3f}",
        f"{'update peak':<22}{self.update_peak / GiB:>12.3f}",
        f"{'budget':<22}{self.budget / GiB:>12.3f}  ({self.margin:.0%} margin)",
        f"fits: {'yes' if self.fits else 'NO'}",
    ]
    return "\n".join(lines)

  def to_dict(self) -> dict[str, Any]:
    return {
        "device": self.device.name, "hbm_bytes": self.device.hbm_bytes,
        "num_devices": self.device.num_devices, "mesh": list(self.inputs.mesh),
        "total_params": self.total_params, "components": dict(self.components),
        "rollout_peak": self.rollout_peak, "score_peak": self.score_peak,
        "update_peak": self.update_peak,
        "budget": self.budget, "fits": self.fits,
    }


def plan(inputs: PlanInputs, device: DeviceSpec, margin: float = 0.1) -> MemoryPlan:
  """Predicts per-device memory of one rollout + update step.

  Args:
    inputs: the run.
    device: the slice; `inputs.mesh` must use all of its devices.
    margin: fraction of HBM kept free for XLA scratch, fragmentation and the runtime.

  Returns:
    The plan; `fits` compares the larger phase peak to (1 - margin) x HBM.
  """
  if math.prod(inputs.mesh) != device.num_devices:
    raise PlanError(f"mesh: {inputs.mesh} has {math.prod(inputs.mesh)} devices but"
                    f" {device.name} has {device.num_devices}")
  c = inputs.model_config()
  data, fsdp, tensor = inputs.mesh
  batch_ways = data * fsdp
  pb, ob = _nbytes(inputs.param_dtype), _nbytes(inputs.optimizer_dtype)
  base_elems, total = param_elems_per_device(c, inputs.mesh)
  lora_elems = lora_elems_per_device(c, inputs.lora_rank, inputs.mesh)
  comp: dict[str, int] = {}
  comp["params"] = base_elems * pb
  if inputs.lora_rank:
    comp["lora params"] = lora_elems * 4
    trainable, trainable_bytes = lora_elems, 4
  else:
    trainable, trainable_bytes = base_elems, pb
  comp["reference params"] = base_elems * pb if (inputs.reference and not inputs.lora_rank) else 0
  vh = (c.hidden_size + 1) if inputs.value_head else 0
  comp["value head"] = vh * 4 * 4  # params, grads, two moments
  comp["optimizer state"] = 2 * trainable * ob
  accumulate = inputs.update_batch < inputs.sequences
  # Plus, with data parallelism (params replicated over 'data'), the all-reduce's buffer.
  comp["grads"] = trainable * trainable_bytes * (2 if data > 1 else 1) + (
      trainable * 4 if accumulate else 0)
  kv_heads = c.num_kv_heads // tensor if c.num_kv_heads % tensor == 0 else c.num_kv_heads
  seqs = inputs.sequences // batch_ways
  comp["kv cache"] = (2 * c.num_layers * seqs * inputs.seq_len * kv_heads * c.head_dim
                      * _nbytes(inputs.kv_dtype))
  vocab = c.vocab_size // tensor if c.vocab_size % tensor == 0 else c.vocab_size
  # Log-probs read the hidden states of the M completion positions only, over the vocabulary
  # in blocks of `vocab_block` columns when set (`decoder.token_logp_entropy`).
  block = c.vocab_block if 0 < c.vocab_block < c.vocab_size else c.vocab_size
  block = block // tensor if block % tensor == 0 else block
  # FSDP gathers each layer's weights (and the unembedding) just before use; one layer and
  # the unembedding are alive at once in XLA's schedule. Scoring and the update gather the
  # unembedding one vocab block at a time (XLA's all-gathers in the compiled update are
  # [K, D]); the sampler's full-vocabulary logits gather the rest as well.
  unembed_elems = c.vocab_size * c.hidden_size
  layer_elems = (total - unembed_elems * (1 if c.tie_word_embeddings else 2)
                 - c.hidden_size) // c.num_layers
  gathered_layer = layer_elems * pb // tensor if fsdp > 1 else 0
  gathered_unembed = unembed_elems * pb // tensor if fsdp > 1 else 0
  gathered_block = block * c.hidden_size * pb if fsdp > 1 else 0
  comp["gathered weights"] = gathered_layer + gathered_block
  comp["sampling unembedding"] = gathered_unembed - gathered_block
  # A decode step reads one layer's k/v out of the cache (the cache itself is updated in
  # place in the scan carry) and, without FSDP, copies that layer's weights out of the
  # stacked params.
  comp["kv cache work"] = comp["kv cache"] // c.num_layers + (
      layer_elems * pb // tensor if fsdp == 1 else 0)
  comp["sampling logits"] = seqs * vocab * 4
  b = inputs.update_batch // batch_ways
  # Shared prompts: the prompt's keys and values of every layer, once per group (the
  # completions' pass attends to them without copying them per row: `decoder.forward`'s
  # shared prefix), are alive through that pass and, in the update, kept for its backward.
  cb = _nbytes(inputs.compute_dtype)
  prompt_kv = lambda rows: (inputs.prompts(rows) * inputs.max_prompt_len * 2 * kv_heads
                            * c.head_dim * c.num_layers * cb if inputs.prompt_group > 1 else 0)
  comp["activations"] = int(_forward_bytes(inputs, b, c, True, tensor) + prompt_kv(b))
  comp["logits"] = LOGITS_COPIES * b * inputs.max_completion_len * block * 4
  # Scoring runs forwards only, over the whole batch: one layer at a time (its gathered
  # weights and working set, beside the prompts' keys and values), then the log-prob pass
  # (one vocab block of the gathered unembedding and the logits), whichever is larger. The
  # policy's pass (skipped on-policy) also takes entropies: the log-softmax and the
  # probabilities are alive beside the logits.
  copies = LOGITS_COPIES if inputs.on_policy else SCORING_ENTROPY_COPIES
  comp["scoring work"] = int(max(
      gathered_layer + _forward_bytes(inputs, seqs, c, False, tensor) + prompt_kv(seqs),
      gathered_block + copies * seqs * inputs.max_completion_len * block * 4))
  resident = (comp["params"] + comp.get("lora params", 0) + comp["reference params"]
              + comp["value head"] + comp["optimizer state"])
  rollout = (resident + comp["gathered weights"] + comp["sampling unembedding"]
             + comp["kv cache"] + comp["kv cache work"] + comp["sampling logits"])
  update = (resident + comp["gathered weights"] + comp["grads"] + comp["activations"]
            + comp["logits"])
  score = resident + comp["scoring work"]
  return MemoryPlan(inputs, device, comp, total, int(rollout), int(update), margin,
                    int(score))
