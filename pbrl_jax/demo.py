"""`make demo`: problems, oracle pivot references, an English warm start, GRPO, evaluation, report.

  python -m pbrl_jax.demo --workdir runs/demo [--config configs/demo.py]

Everything runs offline on the CPU from packages installed by the Makefile. A finished run in
the same workdir is not repeated: its report is shown again.
"""

import json
import os
import statistics
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from pbrl_jax import fileio


def define_flags() -> None:
  """Defines this command's flags when it runs, so that importing the module defines none."""
  global _CONFIG, _WORKDIR, _PREMISE_STEPS
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "configs", "demo.py"), "Demo config file.")
  _WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Run directory.")
  fileio.refuse_remote("workdir")
  _PREMISE_STEPS = flags.DEFINE_integer(
      "premise_steps", -1, "SFT steps of the English warm start (-1: the config file's "
      "'premise' variant; 0: no warm start, GRPO from the base model).")


# Training problems the demo writes, each in every language: 64 x 4 training languages is
# more prompts than 40 steps of 2 read, so no prompt repeats.
N_TRAIN_PROBLEMS = 64


def _fill_workdir(config, workdir: str) -> None:
  """Replaces the `{workdir}` placeholder of the data and eval paths with the run directory."""
  config.data.path = config.data.path.replace("{workdir}", workdir)
  for ds in config.eval.datasets:
    ds["path"] = ds["path"].replace("{workdir}", workdir)


def prepare(config, workdir: str) -> None:
  """Writes the arithmetic problems and imports their English solutions as the references.

  Fills the `{workdir}` placeholders of `config` first; skipped when the references exist.
  """
  from pbrl_jax import pivot_step  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import arith  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import pivot as pivot_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  _fill_workdir(config, workdir)
  if os.path.exists(os.path.join(pivot_lib.reference_dir(workdir), pivot_lib.MANIFEST)):
    return
  print("[demo] writing the arithmetic problems and importing their English worked "
        "solutions as the pivot references (oracle pivot) ...", flush=True)
  # Every language the problems exist in: training reads `data.langs`, evaluation its own.
  n_test = max(int(ds["limit"]) for ds in config.eval.datasets)
  paths = arith.write_split(os.path.join(workdir, "data"), langs=arith.LANGS,
                            n_train=N_TRAIN_PROBLEMS, n_test=n_test)
  pivot_step.build(config, workdir, references=paths["train_references"])


def _premise_config(config_path: str):
  """The 'premise' variant of the demo's config file (the English SFT warm start)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = config_path.split(":")[0]
  spec = importlib.util.spec_from_file_location("_demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("premise")


def warm_start(premise, workdir: str, steps: int = -1) -> str:
  """SFT on the English references asked in English; returns the HF directory it exports.

  The paper's premise is a policy better in English than in the other languages; this gives
  the 135M policy one (see configs/demo.py `premise_config`). The run lives in
  WORKDIR/premise; its LoRA adapters are merged into the base and written as an HF directory,
  which the GRPO run then starts from (as its policy and its KL reference). Skipped when that
  directory exists.
  """
  from pbrl_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax import pivot_step  # pylint: disable=g-import-not-at-top
  from pbrl_jax import train  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data import pivot as pivot_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models import export_hf  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models import sharding  # pylint: disable=g-import-not-at-top
  run_dir = os.path.join(workdir, "premise")
  model_dir = os.path.join(run_dir, "model")
  if os.path.exists(os.path.join(model_dir, "config.json")):
    return model_dir
  _fill_workdir(premise, workdir)  # the problems and references the demo wrote
  if steps >= 0:
    premise.total_steps = steps
    premise.checkpoint_every = max(steps, 1)
  if not os.path.exists(os.path.join(pivot_lib.reference_dir(run_dir), pivot_lib.MANIFEST)):
    pivot_step.build(premise, run_dir,
                     references=os.path.join(workdir, "data", "train_references.jsonl"))
  train.train(premise, run_dir)
  # Read as `pbrl-eval` reads a run: every array straight into the run's sharding.
  mesh = sharding.mesh_from_config(premise.mesh)
  bundle = bundle_lib.ModelBundle(*bundle_lib.load_policy(premise.model, premise.seed, mesh))
  ckpt_lib.restore_policy(bundle, run_dir, ckpt_lib.checkpoint_steps(run_dir)[-1],
                          premise.model, mesh)
  return export_hf(bundle, model_dir)


def time_breakdown(workdir: str, phases: dict[str, float]) -> dict[str, Any]:
  """Seconds per phase of this demo run: `phases` measured by `main`, the evaluations'
  generation and the GRPO steps (median step and its stages) read from the run's files.

  Whatever `phases['grpo run']` does not cover with evaluations and steps is loading,
  compiling the first step's programs, checkpoints and the report.
  """
  from pbrl_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  out = {k: round(v, 1) for k, v in phases.items()}
  for tag in ("before", "after"):
    path = os.path.join(workdir, f"eval_{tag}.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        out[f"evaluation {tag} (generation)"] = round(
            json.load(f)["settings"]["generation_seconds"], 1)
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    rows = [r for r in metrics_lib.read_jsonl(path) if "time/step" in r]
    if rows:
      out["grpo steps"] = round(sum(r["time/step"] for r in rows), 1)
      out["grpo step median"] = {
          key.removeprefix("time/"): round(statistics.median(r[key] for r in rows), 2)
          for key in sorted({k for r in rows for k in r if k.startswith("time/")})
          if all(key in r for r in rows)}
  return out


def main(argv):
  del argv
  from pbrl_jax import train  # pylint: disable=g-import-not-at-top
  config, workdir = _CONFIG.value, _WORKDIR.value
  t0 = time.perf_counter()
  phases = {}
  prepare(config, workdir)
  phases["references"] = time.perf_counter() - t0
  print(f"[demo] pivot references ready ({phases['references']:.0f} s)", flush=True)
  if _PREMISE_STEPS.value != 0:
    premise = _premise_config(config_flags.get_config_filename(flags.FLAGS["config"]))
    steps = _PREMISE_STEPS.value if _PREMISE_STEPS.value > 0 else premise.total_steps
    print(f"[demo] warm start: SFT on the English references in English for {steps} steps"
          " (the paper's premise: a policy that is better in English) ...", flush=True)
    t = time.perf_counter()
    config.model.path = warm_start(premise, workdir, steps)
    phases["warm start"] = time.perf_counter() - t
    print(f"[demo] warm start ready ({time.perf_counter() - t0:.0f} s): {config.model.path}",
          flush=True)
  print(f"[demo] training GRPO for {config.total_steps} steps ...", flush=True)
  t = time.perf_counter()
  summary = train.train_and_report(config, workdir)
  phases["grpo run"] = time.perf_counter() - t
  total = time.perf_counter() - t0
  phases["total"] = total
  timing = time_breakdown(workdir, phases)
  fileio.atomic_write_json(os.path.join(workdir, "demo_timing.json"), timing, indent=1)
  print(f"\n[demo] done in {total / 60:.1f} min: {summary['stopped_by']} at step "
        f"{summary['last_step']}")
  print("[demo] seconds by phase (also in demo_timing.json): "
        + json.dumps(timing))
  print(f"[demo] report: {os.path.join(workdir, 'report.md')}")
  print(f"[demo] metrics: {os.path.join(workdir, 'metrics.jsonl')}; TensorBoard: "
        f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  define_flags()
  app.run(main)
