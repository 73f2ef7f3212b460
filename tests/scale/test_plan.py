"""Memory planner: component formulas, verdicts, and agreement with XLA's memory analysis."""

import json
import math
import os
import sys

import pytest

from pbrl_jax import plan
from pbrl_jax.models.config import DecoderConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "configs", "model_configs")


def _model(name):
  with open(os.path.join(MODELS, f"{name}.json")) as f:
    return DecoderConfig.from_hf_dict(json.load(f))


def _small(**kw):
  d = dict(model_type="llama", vocab_size=8192, hidden_size=512, intermediate_size=1536,
           num_layers=4, num_heads=8, num_kv_heads=4, head_dim=64)
  d.update(kw)
  return DecoderConfig(**d)


def _llama8b_count():
  v, d, f, n, k, h, l = 128256, 4096, 14336, 32, 8, 128, 32
  layer = d * n * h * 2 + d * k * h * 2 + 3 * d * f + 2 * d
  return 2 * v * d + l * layer + d


def test_param_counts_of_real_models():
  p = plan.plan(plan.PlanInputs(model=_model("llama31_8b")), plan.device_spec("h200"))
  assert p.total_params == _llama8b_count()
  assert 8.02e9 < p.total_params < 8.04e9  # Llama-3.1-8B: 8.03B.
  q = plan.plan(plan.PlanInputs(model=_model("qwen3_0p6b")), plan.device_spec("v5e-1"))
  assert 0.59e9 < q.total_params < 0.61e9  # Qwen3-0.6B (tied embeddings): 0.6B.
  q32 = plan.plan(plan.PlanInputs(model=_model("qwen3_32b"), mesh=(1, 4, 1)),
                  plan.device_spec("v5p-8"))
  assert 32.5e9 < q32.total_params < 33.0e9  # Qwen3-32B: 32.8B.


def test_components_follow_the_formulas():
  m = _model("llama31_8b")
  inputs = plan.PlanInputs(model=m, group_size=8, prompts_per_step=8, max_prompt_len=256,
                           max_completion_len=512)
  p = plan.plan(inputs, plan.device_spec("h200"))
  c = p.components
  n = _llama8b_count()
  assert c["params"] == n * 2  # bf16, one device.
  assert c["reference params"] == n * 2
  assert c["optimizer state"] == 2 * n * 4
  assert c["grads"] == n * 2
  assert c["kv cache"] == 2 * 32 * 64 * 768 * 8 * 128 * 2
  assert c["logits"] == 64 * 512 * 128256 * 4  # the completion positions only
  assert c["gathered weights"] == c["sampling unembedding"] == 0
  assert p.update_peak == (c["params"] + c["reference params"] + c["optimizer state"]
                           + c["value head"] + c["grads"] + c["activations"] + c["logits"])


def test_fsdp_gathers_the_unembedding_one_vocab_block_at_a_time():
  # Scoring and the update gather 32768 of the 128256 unembedding rows at a time (XLA's
  # all-gathers in the compiled update are [32768, D]); the sampler gathers all of them.
  m = _model("llama31_8b").replace(vocab_block=32768)
  c = plan.plan(plan.PlanInputs(model=m, mesh=(1, 8, 1)),
                plan.DeviceSpec("x", 1 << 40, 8)).components
  layer = (_llama8b_count() - 2 * 128256 * 4096 - 4096) // 32 * 2  # bf16, untied
  assert c["gathered weights"] == layer + 32768 * 4096 * 2
  assert c["sampling unembedding"] == (128256 - 32768) * 4096 * 2


def test_shared_prompts_and_vocabulary_blocks():
  m = _model("qwen3_0p6b")
  kw = dict(group_size=8, prompts_per_step=4, max_prompt_len=256, max_completion_len=512)
  whole = plan.plan(plan.PlanInputs(model=m, **kw), plan.device_spec("v6e-1")).components
  shared = plan.plan(plan.PlanInputs(model=m, share_prompt=True, **kw),
                     plan.device_spec("v6e-1")).components
  # 32 rows of 768 tokens; shared: 4 prompts of 256 and 32 completions of 512, plus each
  # prompt's keys and values in every layer, once per group (28 layers, 8 kv heads of 128,
  # bf16). The prompts' own forward attends over their 256 positions, not 768: per prompt
  # token 16 heads x 512 fewer scores, saved in 28 layers (bf16 probabilities and fp32
  # scores, 6 bytes) and in the working set of the layer in backward (4 bytes).
  kv = 4 * 256 * 2 * 8 * 128 * 28 * 2
  fewer_scores = 4 * 256 * 16 * 512 * (6 * 28 + 4)
  assert shared["activations"] - kv + fewer_scores == pytest.approx(
      whole["activations"] * (4 * 256 + 32 * 512) / (32 * 768), rel=1e-6)
  blocked = plan.plan(plan.PlanInputs(model=m.replace(vocab_block=4096), **kw),
                      plan.device_spec("v6e-1")).components
  assert whole["logits"] == 32 * 512 * 151936 * 4
  assert blocked["logits"] == 32 * 512 * 4096 * 4
  # A device holding part of a group runs that group's whole prompt.
  inputs = plan.PlanInputs(model=m, share_prompt=True, **kw)
  assert inputs.prompt_group == 8
  assert inputs.tokens(4) == 256 + 4 * 512 and inputs.tokens(16) == 2 * 256 + 16 * 512


def test_sharding_divides_what_the_rules_split():
  m = _model("llama31_8b")
  one = plan.plan(plan.PlanInputs(model=m), plan.DeviceSpec("x", 1 << 40, 1))
  fsdp = plan.plan(plan.PlanInputs(model=m, mesh=(1, 8, 1)), plan.DeviceSpec("x", 1 << 40, 8))
  # FSDP splits every Llama-8B parameter 8 ways (norm scales too: they are over 'embed').
  assert fsdp.components["params"] == one.components["params"] // 8
  # 3 kv heads on a 2-way tensor axis are replicated, as the sharding rules do.
  odd = _small(num_heads=6, num_kv_heads=3)
  t1 = plan.param_elems_per_device(odd, (1, 1, 1))[0]
  t2 = plan.param_elems_per_device(odd, (1, 1, 2))[0]
  kv = 2 * 4 * 512 * 3 * 64  # k_proj and v_proj of 4 layers stay whole...
  norms = 2 * 4 * 512 + 512  # ...and so do the norm scales, which have no tensor axis.
  assert t2 == (t1 - kv - norms) // 2 + kv + norms


def test_lora_drops_reference_and_full_optimizer():
  m = _model("qwen3_4b")
  full = plan.plan(plan.PlanInputs(model=m), plan.device_spec("v6e-1"))
  lora = plan.plan(plan.PlanInputs(model=m, lora_rank=16), plan.device_spec("v6e-1"))
  assert lora.components["reference params"] == 0
  per_layer = 16 * ((2560 + 32 * 128) + 2 * (2560 + 8 * 128) + (32 * 128 + 2560)
                    + 2 * (2560 + 9728) + (9728 + 2560))
  assert lora.components["lora params"] == per_layer * 36 * 4
  assert lora.components["optimizer state"] == 2 * per_layer * 36 * 4
  state = lambda p: sum(p.components[k] for k in (
      "params", "lora params", "reference params", "optimizer state", "grads")
                        if k in p.components)
  # Full FT of 4B params in bf16 + fp32 AdamW: 2 + 2 (reference) + 8 + 2 (grads) bytes each.
  assert state(full) == 14 * full.total_params
  assert state(lora) < state(full) / 6


def test_remat_and_micro_batches_shrink_activations():
  m = _model("qwen3_1p7b")
  base = plan.PlanInputs(model=m, group_size=8, prompts_per_step=2)
  a = plan.plan(base, plan.device_spec("v6e-1")).components
  r = plan.plan(plan.PlanInputs(model=m, group_size=8, prompts_per_step=2, remat=True),
                plan.device_spec("v6e-1")).components
  mb = plan.plan(plan.PlanInputs(model=m, group_size=8, prompts_per_step=2, micro_batch=4),
                 plan.device_spec("v6e-1")).components
  assert r["activations"] < a["activations"] / 5
  assert mb["activations"] == a["activations"] // 4
  assert mb["logits"] == a["logits"] // 4
  assert mb["grads"] == a["grads"] + a["grads"] * 2  # + an fp32 accumulator of bf16 grads.


def test_verdicts():
  small = plan.plan(plan.PlanInputs(model=_model("qwen3_0p6b"), lora_rank=16, group_size=4,
                                    prompts_per_step=2, micro_batch=2, remat=True),
                    plan.device_spec("v5e-1"))
  assert small.fits and small.peak < small.budget
  big = plan.plan(plan.PlanInputs(model=_model("qwen3_32b")), plan.device_spec("v5e-1"))
  assert not big.fits and big.components["params"] > 16 * plan.GiB
  text = big.table()
  assert "fits: NO" in text and "optimizer state" in text


@pytest.mark.parametrize("kwargs,message", [
    (dict(mesh=(1, 2, 1)), "mesh: .* has 2 devices"),
    (dict(param_dtype="bf17"), "param_dtype: unknown dtype"),
    (dict(group_size=3, prompts_per_step=1, mesh=(2, 1, 1)), "not divisible by data\\*fsdp"),
    (dict(micro_batch=3), "micro_batch"),
])
def test_errors_name_the_field(kwargs, message):
  with pytest.raises(plan.PlanError, match=message):
    plan.plan(plan.PlanInputs(model=_small(), **kwargs), plan.device_spec("v5e-1"))


def _table_rows(text: str, header: str) -> list[tuple[str, ...]]:
  """The cells of the markdown table that starts with `header` in `text`."""
  lines = text[text.index(header):].splitlines()[2:]
  rows = []
  for line in lines:
    if not line.startswith("|"):
      break
    rows.append(tuple(c.strip() for c in line.strip().strip("|").split("|")))
  return rows


def test_the_docs_fit_tables_are_the_planners():
  # docs/scaling.md's one-chip table is `pbrl-plan --docs_table` as it prints today, and each
  # row of README's shorter table is one of its rows.
  from pbrl_jax.cli import plan_main  # pylint: disable=g-import-not-at-top
  table = plan_main.docs_table(ROOT)
  with open(os.path.join(ROOT, "docs", "scaling.md"), encoding="utf-8") as f:
    assert table in f.read()
  docs = {(r[0], r[2], r[3], r[4], r[5]) for r in _table_rows(table, "| model |")}
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = _table_rows(f.read(), "| model | setting | rollout / scoring / update peak")
  assert readme and all(row in docs for row in readme), [r for r in readme if r not in docs]


def test_unknown_device():
  with pytest.raises(plan.PlanError, match="device: unknown kind 'v9z-1'"):
    plan.device_spec("v9z-1")
  assert plan.device_spec("v5litepod-8").num_devices == 8


# XLA agreement: the trainer's own scoring and update programs (`plan_xla.trainer_steps`,
# built as `pbrl-train` builds them) and the rollout's decode step, compiled on the 8 fake CPU
# devices of the test process from a training config; nothing is allocated. fp32 throughout:
# CPU XLA upcasts bf16 math and keeps extra copies, TPU does not.
SMALL = dict(hidden_size=512, intermediate_size=1536, num_layers=4, num_heads=8,
             num_kv_heads=4, head_dim=64, vocab_size=8192)
BASE = {"data.buckets": (128,), "rollout.max_new_tokens": 128, "data.global_batch_size": 2,
        "data.group_size": 4}
XLA_CASES = [
    # (config arg, mesh, config fields). GRPO on a (1, 4, 2) mesh: tests/scale/test_plan_cli.py.
    ("ppo", (1, 1, 1), {}),  # the policy's forward in scoring, two minibatches, a value head
    ("grpo", (1, 1, 1), {"model.lora_rank": 8}),  # LoRA: unmerged, the base frozen
]
XLA_CASES_SLOW = [
    ("grpo", (8, 1, 1), {"data.global_batch_size": 8}),  # data parallel: grads all-reduced
    ("grpo", (1, 1, 1), {"model.vocab_block": 2048}),
    ("grpo", (1, 1, 1), {"rl.num_microbatches": 2}),
    ("grpo", (1, 1, 1), {"rl.share_prompt": False}),
    ("grpo", (1, 1, 1), {"model.remat": True}),
]


def _xla_config(arg, mesh, fields):
  sys.path.insert(0, ROOT)
  from configs import tiny  # pylint: disable=g-import-not-at-top
  c = tiny.get_config(arg)
  c.model.overrides = dict(SMALL)
  c.model.param_dtype = c.model.dtype = "float32"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  for key, value in {**BASE, **fields}.items():
    *parents, leaf = key.split(".")
    node = c
    for name in parents:
      node = node[name]
    node[leaf] = value
  return c


def _check_against_xla(arg, mesh, fields):
  from pbrl_jax import plan_xla  # pylint: disable=g-import-not-at-top
  from pbrl_jax.cli import plan_main  # pylint: disable=g-import-not-at-top
  c = _xla_config(arg, mesh, fields)
  model, kwargs, _ = plan_main.inputs_from_config(c)
  inputs = plan.PlanInputs(model=model, mesh=mesh, kv_dtype="float32", **kwargs)
  result = plan_xla.compare_with_xla(plan_main.trainer_spec(c), inputs.model_config(), inputs)
  for step in plan_xla.STEPS:
    r = result[step]
    assert r["xla_argument"] > 0
    assert r["ratio"] == pytest.approx(1.0, abs=0.15), (step, r)
  # The donated state is exact: trainable params + AdamW moments (+ the value head).
  p = plan.plan(inputs, plan.DeviceSpec("x", 1 << 50, math.prod(mesh)))
  trainable = p.components.get("lora params", p.components["params"])
  resident = trainable + p.components["optimizer state"] + p.components["value head"]
  assert result["update"]["xla_alias"] == pytest.approx(resident, rel=1e-3)
  return result


@pytest.mark.parametrize("case", XLA_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{sorted(c[2])}")
def test_planner_within_15_percent_of_the_trainers_programs(case):
  _check_against_xla(*case)


@pytest.mark.slow
@pytest.mark.parametrize("case", XLA_CASES_SLOW, ids=lambda c: f"{c[0]}-{c[1]}-{sorted(c[2])}")
def test_planner_within_15_percent_of_the_trainers_programs_more_shapes(case):
  _check_against_xla(*case)


def test_lora_update_moves_no_activations_between_devices():
  """One row per device, LoRA on the MLP: the update's MLP collectives gather weights only.

  Flattening the MLP adapters' rows on a sharded batch (`decoder._with_lora`) made XLA's
  partitioner all-reduce and all-gather [B, T, D] and [B, T, F] activations in every layer
  (1.8 GiB per device and layer in the Llama-3.1-8B update on 256 devices). A weight or
  adapter gather has only D, F and rank dims; an activation has a token axis."""
  import re  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from pbrl_jax import plan_xla  # pylint: disable=g-import-not-at-top
  from pbrl_jax.cli import plan_main  # pylint: disable=g-import-not-at-top
  rank, mesh = 16, (2, 4, 1)
  c = _xla_config("grpo", mesh, {"model.lora_rank": rank})  # 2 prompts x G=4: 8 rows
  model, kwargs, _ = plan_main.inputs_from_config(c)
  model = plan.PlanInputs(model=model, mesh=mesh, **kwargs).model_config()
  m = plan_xla.mesh_for(jax.devices(), mesh)
  fn, args = plan_xla.trainer_steps(plan_main.trainer_spec(c), model, m)["update"]
  hlo = plan_xla.compiled(fn, args, m).as_text()
  weight_dims = {str(model.hidden_size), str(model.intermediate_size), str(rank)}
  collectives = re.findall(r"= \w+\[([\d,]*)\]\S* (?:all-gather|all-reduce|all-to-all|"
                           r"collective-permute|reduce-scatter)\([^\n]*layers/mlp", hlo)
  assert collectives  # fsdp gathers each layer's weights and adapters
  moved = [dims for dims in collectives if not set(dims.split(",")) <= weight_dims]
  assert not moved, moved
