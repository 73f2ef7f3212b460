"""The trainer's own steps compiled ahead of time, against the planner's bytes.

`pbrl-plan --check-xla` and the AOT tests lower the scoring and update programs that
`pbrl-train` runs, built by the same functions (`stages.make_state_fns`,
`stages.make_device_steps`) from abstract parameters: nothing is allocated, so a 32B model
compiles for a 256-chip mesh on fake CPU devices. XLA's `memory_analysis()` of each program
is set beside the planner's prediction of the same phase (`plan.plan`). The rollout's decode
step is the planner's own one-token program (`abstract_decode_step`), the sampler's layer
loop without its host-side control.

Not compiled: the reward encoder (`stages.make_device_steps` gets no `embed_fn`; USE-sized
encoders are a few hundred MB, inside the planner's margin).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pbrl_jax import plan as plan_lib
from pbrl_jax import stages
from pbrl_jax.models import decoder
from pbrl_jax.models import lora as lora_lib
from pbrl_jax.models import sharding as sharding_lib
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.rl import advantages as adv_lib
from pbrl_jax.rl import losses
from pbrl_jax.train_spec import TrainerSpec

Step = tuple[Callable[..., Any], tuple[Any, ...]]  # (jitted function, abstract arguments)


def mesh_for(devices: Sequence[jax.Device], mesh_shape: Sequence[int]) -> Mesh:
  return sharding_lib.make_mesh(*mesh_shape, devices=list(devices)[:math.prod(mesh_shape)])


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      tree, shardings)


def _batch(mesh: Mesh, **leaves: tuple[tuple[int, ...], Any]) -> dict[str, Any]:
  """Abstract batch arrays split over ('data', 'fsdp') on their leading axis, as the
  trainer puts them (`stages.StepFns.batch_sharding`)."""
  sh = sharding_lib.batch_sharding(mesh, 1)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
          for k, (shape, dtype) in leaves.items()}


def trainer_steps(spec: TrainerSpec, model_cfg: DecoderConfig, mesh: Mesh) -> dict[str, Step]:
  """{'score': ..., 'update': ...}: the trainer's programs for `spec` at full batch size.

  Shapes are the largest a run meets: `global_batch_size x group_size` rows, the longest
  prompt bucket and `rollout.max_new_tokens` completion columns. The batches hold what
  `stages.score_stage` and `stages.advantage_stage` give the programs (dtypes included).
  """
  optimizer, lora, state_fns = stages.make_state_fns(spec, model_cfg, mesh)
  score_fn, update_fn = stages.make_device_steps(spec, mesh, model_cfg, state_fns, optimizer,
                                                 lora)
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  policy = _abstract(decoder.param_shapes(model_cfg), state_fns.policy_shardings)
  state = _abstract(jax.eval_shape(state_fns.from_params, policy, key), state_fns.shardings)
  # The frozen base (LoRA) or the reference copy (a KL term); None otherwise, as train.build.
  base = policy if lora is not None or spec.rl.uses_reference else None
  rows = spec.pipeline.global_batch_size * spec.pipeline.group_size
  m = spec.rollout.max_new_tokens
  t = max(spec.pipeline.buckets) + m
  i32, f32 = jnp.int32, jnp.float32
  scored = dict(tokens=((rows, t), i32), valid=((rows, t), jnp.bool_),
                completion_mask=((rows, m), jnp.bool_))
  score_args = (state.params, base, _batch(mesh, **scored))
  # The advantages' shape is the estimator's ([B] or [B, M]): read from the trainer's own.
  adv = jax.eval_shape(
      lambda r, cm, lp, ref, v: adv_lib.batch_advantages(
          spec.rl, spec.pipeline.group_size, r, cm, lp, ref, v),
      jax.ShapeDtypeStruct((rows,), f32), jax.ShapeDtypeStruct((rows, m), jnp.bool_),
      jax.ShapeDtypeStruct((rows, m), f32),
      jax.ShapeDtypeStruct((rows, m), f32) if spec.rl.uses_reference else None,
      jax.ShapeDtypeStruct((rows, m), f32) if spec.rl.is_ppo else None)[0]
  update = dict(scored, old_logp=((rows, m), f32), advantages=(adv.shape, adv.dtype))
  if spec.rl.uses_reference:
    update["ref_logp"] = ((rows, m), f32)
  if spec.rl.is_ppo:
    update.update(returns=((rows, m), f32), old_values=((rows, m), f32))
  if spec.rl.rollout_correction is not losses.RolloutCorrection.OFF:
    update["rollout_weight"] = ((rows, m), f32)
  update_args = (state, _batch(mesh, **update)) + ((base,) if lora is not None else ())
  return {"score": (score_fn, score_args), "update": (update_fn, update_args)}


def abstract_decode_step(inputs: plan_lib.PlanInputs, mesh: Mesh) -> Step:
  """One sampling step over the full rollout batch: a token in, fp32 logits out.

  The KV cache (`decoder.init_cache`, B*G rows) is donated and updated in place. With
  `lora_rank` the adapters ride along unmerged, as in the trainer's sampler.

  Returns:
    (jitted function, abstract args).
  """
  c = inputs.model_config()
  shapes = decoder.param_shapes(c)
  p_shard = sharding_lib.param_shardings(decoder.param_logical_axes(c), shapes, mesh)
  rank = inputs.lora_rank
  lora_shapes = lora_sh = None
  if rank:
    lora_shapes = lora_lib.lora_shapes(c, lora_lib.ALL_TARGETS, rank)
    lora_sh = sharding_lib.param_shardings(
        lora_lib.lora_logical_axes(c, lora_lib.ALL_TARGETS, rank), lora_shapes, mesh)
  b, s = inputs.sequences, inputs.seq_len
  kv = jnp.dtype(inputs.kv_dtype)
  cache_shapes = jax.eval_shape(lambda: decoder.init_cache(c, b, s, kv))
  cache_sh = {n: NamedSharding(mesh, sharding_lib.logical_to_mesh_spec(
      P(*axes), cache_shapes[n].shape, mesh)) for n, axes in decoder.cache_logical_axes().items()}
  cache = {n: jax.ShapeDtypeStruct(x.shape, kv, sharding=cache_sh[n])
           for n, x in cache_shapes.items()}
  bs2 = sharding_lib.batch_sharding(mesh, 2)
  rep = sharding_lib.replicated(mesh)
  tokens = jax.ShapeDtypeStruct((b, 1), jnp.int32, sharding=bs2)
  positions = jax.ShapeDtypeStruct((b, 1), jnp.int32, sharding=bs2)
  valid = jax.ShapeDtypeStruct((b, s), jnp.bool_, sharding=bs2)
  index = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)

  def step(params, cache, tokens, positions, valid, index, adapters):
    mask = valid[:, None, :]  # [B,1,S]
    hidden, cache = decoder.forward(params, c, tokens, positions, mask, cache, index,
                                    lora=adapters, lora_scale=2.0)
    return decoder.unembed(params, c, hidden)[:, 0], cache

  fn = jax.jit(step, in_shardings=(p_shard, cache_sh, bs2, bs2, bs2, rep, lora_sh),
               out_shardings=(sharding_lib.batch_sharding(mesh, 2), cache_sh),
               donate_argnums=(1,))
  adapters = _abstract(lora_shapes, lora_sh) if rank else None
  return fn, (_abstract(shapes, p_shard), cache, tokens, positions, valid, index, adapters)


@dataclasses.dataclass(frozen=True)
class XlaMemory:
  """Per-device bytes from `compiled.memory_analysis()`.

  `peak` = arguments + outputs - aliased (donated buffers reused for outputs) + temporaries:
  what is alive at once at the step's high-water mark, if every argument stays resident.
  """

  argument: int
  output: int
  alias: int
  temp: int

  @property
  def peak(self) -> int:
    return self.argument + self.output - self.alias + self.temp


def compiled(fn: Callable[..., Any], args: Sequence[Any], mesh: Mesh) -> Any:
  """`fn` lowered for abstract `args` and compiled (nothing is allocated).

  Traced under the mesh and the logical axis rules: the decoder's activation constraints
  bind only there, and without them XLA may shard activations over D and gather the batch.
  """
  with jax.set_mesh(mesh), sharding_lib.axis_rules():
    return fn.lower(*args).compile()


def xla_memory(fn: Callable[..., Any], args: Sequence[Any], mesh: Mesh) -> XlaMemory:
  """AOT-compiles `fn` for abstract `args` (`compiled`) and reads XLA's numbers."""
  m = compiled(fn, args, mesh).memory_analysis()
  return XlaMemory(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                   int(m.alias_size_in_bytes), int(m.temp_size_in_bytes))




def planned_update_bytes(p: plan_lib.MemoryPlan) -> int:
  """The planner's bytes of the update program: what it reads (trainable params, their
  AdamW moments, the frozen base with LoRA) and what it builds."""
  c = p.components
  return (c["params"] + c.get("lora params", 0) + c["value head"] + c["optimizer state"]
          + c["gathered weights"] + c["grads"] + c["activations"] + c["logits"])


def planned_score_bytes(p: plan_lib.MemoryPlan) -> int:
  """The planner's bytes of the scoring program: the params its forwards read (the policy
  unless on-policy, the reference or the LoRA base) and one forward's working set."""
  c, i = p.components, p.inputs
  read = c["reference params"]
  if i.lora_rank:
    read += c["params"] + c["lora params"]  # the base, with and without the adapters
  elif not i.on_policy:
    read += c["params"]
  return read + c["scoring work"]  # which holds the weights it gathers


def planned_decode_bytes(p: plan_lib.MemoryPlan) -> int:
  c = p.components
  return (c["params"] + c.get("lora params", 0) + c["gathered weights"]
          + c["sampling unembedding"] + c["kv cache"]
          + c["kv cache work"] + c["sampling logits"])


STEPS = ("score", "update", "decode")


def compare_with_xla(spec: TrainerSpec, model_cfg: DecoderConfig,
                     inputs: plan_lib.PlanInputs, devices: Sequence[jax.Device] | None = None,
                     steps: Sequence[str] = STEPS) -> dict[str, Any]:
  """Planner and XLA per-device bytes of the trainer's programs, side by side.

  `inputs` describe the same run as `spec` (`pbrl-plan`'s reading of the config). Compiles
  on `devices` (default: all local devices; fake CPU devices work) with `inputs.mesh`;
  nothing is allocated.

  Returns:
    {'total_params', and for each step: {'planner', 'xla_peak', 'xla_argument',
    'xla_output', 'xla_alias', 'xla_temp', 'ratio' (planner / XLA)}}.
  """
  unknown = sorted(set(steps) - set(STEPS))
  if unknown:
    raise plan_lib.PlanError(f"steps: unknown {unknown}; known: {list(STEPS)}")
  devices = list(devices if devices is not None else jax.devices())
  mesh = mesh_for(devices, inputs.mesh)
  p = plan_lib.plan(inputs, plan_lib.DeviceSpec("compile", 1 << 50, math.prod(inputs.mesh)))
  programs = trainer_steps(spec, model_cfg, mesh)
  programs["decode"] = abstract_decode_step(inputs, mesh)
  planned = {"score": planned_score_bytes(p), "update": planned_update_bytes(p),
             "decode": planned_decode_bytes(p)}
  out: dict[str, Any] = {"total_params": p.total_params}
  for name in steps:
    x = xla_memory(*programs[name], mesh)
    out[name] = {"planner": planned[name], "xla_peak": x.peak, "xla_argument": x.argument,
                 "xla_output": x.output, "xla_alias": x.alias, "xla_temp": x.temp,
                 "ratio": planned[name] / x.peak}
  return out
