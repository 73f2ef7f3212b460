"""pbrl-plan: predicted per-device memory of a training run, and whether it fits.

  pbrl-plan --config configs/tiny.py --device v5e-1
  pbrl-plan --config configs/llama31_8b_grpo.py --model configs/model_configs/llama31_8b.json \
      --device v5e-8
  pbrl-plan --model configs/model_configs/qwen3_4b.json --device v6e-1 --group_size 8 \
      --prompts_per_step 4 --max_prompt_len 256 --max_completion_len 512 --lora_rank 16
  pbrl-plan --config configs/qwen3_32b_grpo.py --model configs/model_configs/qwen3_32b.json \
      --device v5p-512 --check-xla   # the trainer's programs compiled for 256 chips (minutes)
  pbrl-plan --docs_table   # the table in docs/scaling.md

With --config, the run is read from the training config (sections model, rl, data, mesh,
train); any flag given explicitly on the command line overrides the config's value. With
--config and --model, --model's config.json is the architecture (for configs whose
`model.path` lives on the TPU hosts).

--check-xla (with --config) also compiles the trainer's own scoring and update programs and
the rollout's decode step for the slice's device count, on fake CPU devices and from
abstract parameters (nothing is allocated; `pbrl_jax.plan_xla`), in float32 (CPU XLA does
not describe bfloat16 on a TPU), prints the planner's bytes beside XLA's for each, and exits
with status 1 when one is more than 15% off (--xla_tolerance).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from pbrl_jax import plan as plan_lib
from pbrl_jax import stages
from pbrl_jax.models import bundle
from pbrl_jax.models.config import ConfigError, DecoderConfig


def define_flags() -> None:
  """Defines this command's flags when it runs, so that importing the module defines none."""
  global _CONFIG, _MODEL, _DEVICE, _MESH, _G, _B, _PROMPT, _COMPLETION, _MICRO, _LORA
  global _PDTYPE, _CDTYPE, _ODTYPE, _KVDTYPE, _REMAT, _REFERENCE, _VALUE, _MARGIN, _CPU_GB
  global _JSON, _DOCS_TABLE, _CHECK_XLA, _XLA_TOL
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                            lock_config=False)
  _MODEL = flags.DEFINE_string("model", None, "HF config.json, or a directory holding one.")
  _DEVICE = flags.DEFINE_string("device", "v5e-1",
                                f"Device kind: {', '.join(sorted(plan_lib.DEVICES))} or cpu.")
  _MESH = flags.DEFINE_string("mesh", None,
                              "data,fsdp,tensor; default: fsdp over every device of the slice.")
  _G = flags.DEFINE_integer("group_size", 8, "G, completions per prompt.")
  _B = flags.DEFINE_integer("prompts_per_step", 8, "B, prompts per global step.")
  _PROMPT = flags.DEFINE_integer("max_prompt_len", 256, "Prompt tokens.")
  _COMPLETION = flags.DEFINE_integer("max_completion_len", 512, "Completion tokens.")
  _MICRO = flags.DEFINE_integer("micro_batch", 0, "Sequences per update micro-batch; 0: B*G.")
  _LORA = flags.DEFINE_integer("lora_rank", 0, "LoRA rank; 0 is full fine-tuning.")
  _PDTYPE = flags.DEFINE_string("param_dtype", "bfloat16", "Weight storage dtype.")
  _CDTYPE = flags.DEFINE_string("compute_dtype", "bfloat16", "Matmul dtype.")
  _ODTYPE = flags.DEFINE_string("optimizer_dtype", "float32", "AdamW moments dtype.")
  _KVDTYPE = flags.DEFINE_string("kv_dtype", "bfloat16", "Rollout KV cache dtype.")
  _REMAT = flags.DEFINE_bool("remat", False, "Rematerialise each layer in the backward pass.")
  _REFERENCE = flags.DEFINE_bool("reference", True, "Keep a reference policy (KL term).")
  _VALUE = flags.DEFINE_bool("value_head", False, "PPO value head.")
  _MARGIN = flags.DEFINE_float("margin", 0.1, "Fraction of device memory kept free.")
  _CPU_GB = flags.DEFINE_float("cpu_memory_gb", None, "Memory of --device cpu; default: host RAM.")
  _JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
  _DOCS_TABLE = flags.DEFINE_bool("docs_table", False,
                                  "Print the markdown table of docs/scaling.md and exit.")
  _CHECK_XLA = flags.DEFINE_bool(
      "check_xla", False, "Compile the trainer's programs for the slice on fake CPU devices"
      " and compare XLA's bytes with the planner's (needs --config; exit 1 beyond"
      " --xla_tolerance).")
  flags.DEFINE_alias("check-xla", "check_xla")
  _XLA_TOL = flags.DEFINE_float("xla_tolerance", 0.15,
                                "--check-xla: largest accepted |planner / XLA - 1|.")

# Training-config paths read by `inputs_from_config` (section.field -> PlanInputs field).
def flag_fields() -> dict[str, Any]:
  """PlanInputs field -> its flag (defined by `define_flags`)."""
  return {
      "group_size": _G, "prompts_per_step": _B, "max_prompt_len": _PROMPT,
      "max_completion_len": _COMPLETION, "micro_batch": _MICRO, "lora_rank": _LORA,
      "param_dtype": _PDTYPE, "compute_dtype": _CDTYPE, "optimizer_dtype": _ODTYPE,
      "kv_dtype": _KVDTYPE, "remat": _REMAT, "reference": _REFERENCE, "value_head": _VALUE,
  }


def load_model_config(path: str) -> DecoderConfig:
  """A DecoderConfig from a config.json, a Hugging Face model directory or a .gguf file."""
  if path == "embedded:smollm2":
    from pbrl_jax.models import embedded  # pylint: disable=g-import-not-at-top
    path = embedded.smollm2_gguf_path()
  if path.endswith(".gguf") and os.path.isfile(path):
    from pbrl_jax.models import gguf_loader  # pylint: disable=g-import-not-at-top
    return gguf_loader.gguf_config(gguf_loader.GGUFFile(path))
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not path.endswith(".json"):
    raise plan_lib.PlanError(
        f"model: {path!r} is not a config.json or a directory holding one (for a .gguf, pass"
        " --model with the config.json of the same architecture)")
  with open(path) as f:
    return DecoderConfig.from_hf_dict(json.load(f), source=path)


def _get(cfg: Any, dotted: str) -> Any:
  node = cfg
  for part in dotted.split("."):
    if part not in node:
      raise KeyError(dotted)
    node = node[part]
  return node


def trainer_spec(cfg: Any) -> Any:
  """The training config as the trainer validates it (`TrainerSpec.from_config`)."""
  from pbrl_jax.train_spec import TrainerSpec  # pylint: disable=g-import-not-at-top
  try:
    return TrainerSpec.from_config(cfg)
  except ConfigError as e:
    raise plan_lib.PlanError(f"config: {e}") from None


def inputs_from_config(cfg: Any, base_dir: str = ".", model_file: str | None = None
                       ) -> tuple[DecoderConfig, dict[str, Any], tuple[int, int, int] | None]:
  """Reads the model, the PlanInputs fields and the mesh from a training config.

  `model_file` (a config.json, `--model`) gives the architecture instead of the config's
  `model.path`: the pod configs name a path on the TPU hosts that is not on this machine.

  Returns:
    (model config, PlanInputs keyword arguments, mesh or None when the config has none).

  Raises:
    PlanError: naming the missing config field.
  """
  model = load_model_config(model_file) if model_file else None
  for key in () if model else ("model.hf_config", "model.path"):
    try:
      value = _get(cfg, key)
    except KeyError:
      continue
    if isinstance(value, str) and value:
      local = os.path.join(base_dir, value)
      model = load_model_config(local if os.path.exists(local) else value)
    elif value:  # An inline config.json dictionary.
      model = DecoderConfig.from_hf_dict(dict(value), source=key)
    if model is not None:
      break
  if model is None:
    raise plan_lib.PlanError("config: needs model.hf_config or model.path (a config.json or"
                             " a model directory); or run with --model")
  try:
    group_size = int(_get(cfg, "data.group_size"))
    prompts = int(_get(cfg, "data.global_batch_size"))
    kwargs: dict[str, Any] = {
        "group_size": group_size,
        "prompts_per_step": prompts,
        "max_prompt_len": int(max(_get(cfg, "data.buckets"))),
        "max_completion_len": int(_get(cfg, "rollout.max_new_tokens")),
        # Rows one forward-backward of the update runs: a micro-batch of a minibatch.
        "micro_batch": prompts * group_size // (int(_get(cfg, "rl.num_minibatches"))
                                                * int(_get(cfg, "rl.num_microbatches"))),
        "param_dtype": str(_get(cfg, "model.param_dtype")),
        "compute_dtype": str(_get(cfg, "model.dtype")),
        "remat": bool(_get(cfg, "model.remat")),
        "value_head": _get(cfg, "rl.algorithm") == "ppo",
        "lora_rank": int(_get(cfg, "model.lora_rank")),
    }
  except KeyError as e:
    raise plan_lib.PlanError(f"config: missing field {e.args[0]} (or run with --model)"
                             ) from None
  spec = trainer_spec(cfg)
  # The architecture the trainer builds: the model section's vocabulary block and overrides.
  model = bundle.run_config(model, spec.model)
  kwargs.update(
      # The trainer keeps a reference copy only when a KL term reads it (`train.build`).
      reference=spec.rl.uses_reference, share_prompt=spec.prompt_group > 1,
      on_policy=not stages.scores_policy(spec))
  mesh = None
  try:
    mesh = tuple(int(_get(cfg, f"mesh.{a}")) for a in ("data", "fsdp", "tensor"))
  except KeyError:
    pass
  return model, kwargs, mesh


def default_mesh(num_devices: int) -> tuple[int, int, int]:
  """FSDP over the whole slice: the layout that minimises per-device bytes."""
  return (1, num_devices, 1)


def parse_mesh(text: str, num_devices: int) -> tuple[int, int, int]:
  parts = [int(p) for p in text.split(",")]
  if len(parts) != 3:
    raise plan_lib.PlanError(f"--mesh: expected data,fsdp,tensor, got {text!r}")
  if parts[0] == -1:
    parts[0] = num_devices // max(1, parts[1] * parts[2])
  return tuple(parts)  # type: ignore[return-value]


# (model file, label) rows and (mode, lora rank) columns of the docs table.
DOCS_MODELS = (("qwen3_0p6b", "Qwen3-0.6B"), ("qwen3_1p7b", "Qwen3-1.7B"),
               ("qwen3_4b", "Qwen3-4B"), ("qwen3_8b", "Qwen3-8B"),
               ("llama31_8b", "Llama-3.1-8B"), ("qwen3_32b", "Qwen3-32B"))
DOCS_SETTINGS = (
    # label, lora rank, remat, G, prompts, prompt len, completion len, micro batch
    ("full FT, G=8, 256+512", 0, False, 8, 1, 256, 512, 0),
    ("full FT + remat, G=8, 256+512, micro 2", 0, True, 8, 1, 256, 512, 2),
    ("LoRA r=16 + remat, G=8, 256+512, micro 2", 16, True, 8, 1, 256, 512, 2),
    ("LoRA r=64 + remat, G=16, 256+1024, micro 2", 64, True, 16, 1, 256, 1024, 2),
)


def docs_table(root: str) -> str:
  """The markdown table of docs/scaling.md: peak GiB per device on v5e-1 and v6e-1."""
  lines = ["| model | params | setting | rollout / scoring / update peak, GiB |"
           " v5e-1 (16 GiB) | v6e-1 (32 GiB) |", "|---|---|---|---|---|---|"]
  # The trainer's defaults (configs/common.py): shared prompts, the vocabulary in blocks.
  sys.path.insert(0, root)
  from configs import common  # pylint: disable=g-import-not-at-top
  block = int(common.base_config("grpo").model.vocab_block)
  for fname, label in DOCS_MODELS:
    model = load_model_config(os.path.join(root, "configs", "model_configs", f"{fname}.json"))
    for setting, rank, remat, g, b, p, c, micro in DOCS_SETTINGS:
      inputs = plan_lib.PlanInputs(
          model=model.replace(vocab_block=block), group_size=g, prompts_per_step=b,
          max_prompt_len=p, max_completion_len=c, micro_batch=micro, lora_rank=rank,
          remat=remat, share_prompt=True)
      results = [plan_lib.plan(inputs, plan_lib.device_spec(d)) for d in ("v5e-1", "v6e-1")]
      r = results[0]
      verdicts = " | ".join("fits" if x.fits else "no" for x in results)
      peaks = " / ".join(f"{x / plan_lib.GiB:.1f}"
                         for x in (r.rollout_peak, r.score_peak, r.update_peak))
      lines.append(f"| {label} | {r.total_params / 1e9:.2f}B | {setting} | {peaks} |"
                   f" {verdicts} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    _main()
  except (plan_lib.PlanError, ConfigError, OSError) as e:
    sys.exit(f"pbrl-plan: {e}")


def _main() -> None:
  if _DOCS_TABLE.value:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(docs_table(root))
    return
  cpu_bytes = None
  if _DEVICE.value.lower() == "cpu":
    if _CPU_GB.value is not None:
      cpu_bytes = int(_CPU_GB.value * plan_lib.GiB)
    else:
      import psutil  # Host RAM only matters for --device cpu.
      cpu_bytes = psutil.virtual_memory().total
  device = plan_lib.device_spec(_DEVICE.value, cpu_bytes)
  if _CHECK_XLA.value:
    # Fake CPU devices for the slice; read when JAX first creates its CPU backend, so before
    # anything below (reading the config validates it with JAX) can.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={device.num_devices}")
    os.environ["JAX_PLATFORMS"] = "cpu"
  kwargs: dict[str, Any] = {}
  mesh, overridden = None, []
  if _CONFIG.value is not None:
    model, kwargs, mesh = inputs_from_config(_CONFIG.value, model_file=_MODEL.value)
    overridden = [f"--{flag.name}" for field, flag in flag_fields().items()
                  if field in kwargs and flags.FLAGS[flag.name].present]
    for field, flag in flag_fields().items():
      if flags.FLAGS[flag.name].present or field not in kwargs:
        kwargs[field] = flag.value
  elif _MODEL.value is not None:
    model = load_model_config(_MODEL.value)
    kwargs = {field: flag.value for field, flag in flag_fields().items()}
  else:
    raise app.UsageError("pass --config or --model")
  if _MESH.value:
    mesh = parse_mesh(_MESH.value, device.num_devices)
  if mesh is None or -1 in mesh:
    mesh = default_mesh(device.num_devices) if mesh is None else parse_mesh(
        ",".join(map(str, mesh)), device.num_devices)
  inputs = plan_lib.PlanInputs(model=model, mesh=mesh, **kwargs)
  result = plan_lib.plan(inputs, device, margin=_MARGIN.value)
  if not _CHECK_XLA.value:
    print(json.dumps(result.to_dict(), indent=2) if _JSON.value else result.table())
    return
  if _CONFIG.value is None or overridden:
    raise app.UsageError("--check-xla compiles the trainer's programs of a --config as"
                         " written; give changes as --config.<field>=<value>"
                         + (f", not {', '.join(overridden)}" if overridden else ""))
  xla = check_xla(_CONFIG.value, inputs, device.num_devices)
  bad = [s for s, r in xla.items() if isinstance(r, dict) and
         abs(r["ratio"] - 1.0) > _XLA_TOL.value]
  if _JSON.value:
    print(json.dumps({**result.to_dict(), "xla": xla}, indent=2))
  else:
    print(result.table() + "\n\n" + xla_table(xla))
    print("(the XLA check compiles the run in float32 on fake CPU devices: CPU XLA does not"
          " describe bfloat16 on a TPU)")
  if bad:
    sys.exit(f"pbrl-plan: the planner is more than {_XLA_TOL.value:.0%} off XLA for"
             f" {', '.join(bad)}")


def check_xla(cfg: Any, inputs: plan_lib.PlanInputs, num_devices: int) -> dict[str, Any]:
  """The trainer's programs compiled on `num_devices` fake CPU devices: planner vs XLA bytes
  per device (`plan_xla.compare_with_xla`), both in float32.

  XLA on CPU computes bfloat16 in float32 and keeps extra copies that a TPU does not, so a
  bfloat16 compile here would not describe the TPU: the check compiles (and plans) the run
  with float32 weights, compute and cache, which tests the same byte model.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from pbrl_jax import plan_xla  # pylint: disable=g-import-not-at-top
  if jax.device_count() < num_devices:
    raise plan_lib.PlanError(f"--check-xla: needs {num_devices} devices, JAX has"
                             f" {jax.device_count()} (its backend started before the flag)")
  fp32 = "float32"
  inputs = dataclasses.replace(inputs, param_dtype=fp32, compute_dtype=fp32, kv_dtype=fp32)
  spec = trainer_spec(cfg)
  spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, dtype=fp32,
                                                             param_dtype=fp32))
  return plan_xla.compare_with_xla(spec, inputs.model_config(), inputs)


def xla_table(xla: dict[str, Any]) -> str:
  gib = plan_lib.GiB
  lines = [f"{'XLA check':<10}{'planner GiB':>12}{'XLA GiB':>10}{'args':>8}{'temp':>8}"
           f"{'ratio':>7}"]
  for step, r in xla.items():
    if isinstance(r, dict):
      lines.append(f"{step:<10}{r['planner'] / gib:>12.3f}{r['xla_peak'] / gib:>10.3f}"
                   f"{r['xla_argument'] / gib:>8.2f}{r['xla_temp'] / gib:>8.2f}"
                   f"{r['ratio']:>7.2f}")
  return "\n".join(lines)


def run() -> None:
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
