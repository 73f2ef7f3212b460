"""pbrl-compare, the whole comparison: options, then parity, curves and speed in one run."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax

from pbrl_jax.fileio import atomic_write

from pbrl_jax.compare.prompts import (make_semantic_reward_func, select_prompts,
                                      verifiable_reward_func)
from pbrl_jax.compare.preset import Preset, preset_table
from pbrl_jax.compare.models import default_model_dir, trl_loadable_dir
from pbrl_jax.compare.jax_side import build_jax_side, jax_train_step
from pbrl_jax.compare.trl_side import build_trl_trainer, run_trl
from pbrl_jax.compare.parity import step_parity
from pbrl_jax.compare.report import (JAX_PHASES, TRL_PHASES, markdown_report, plot_curves,
                                     speed_summary)
from pbrl_jax.compare.common import RewardFunc


# ---------------------------------------------------------------------------------------------
# The whole comparison.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
  """What `pbrl-compare` runs.

  Attributes:
    model_dir: HF model directory ('' builds the default SmolLM2 directory in cache_dir).
    out_dir: where results, report.md, curves.png and TRL's output dir go.
    steps: training steps per side (0: parity only).
    num_prompts: prompts per step (all of them every step).
    preset: the matched hyperparameters.
    reward: 'verifiable', or a semantic kind of `RewardSpec` ('embedding', 'hybrid', 'mt').
    parity: run the step-level parity check.
    trl_bf16: run TRL's training in bf16 autocast (parity stays fp32).
    cache_dir: where the default model directory is cached.
    jax_microbatches: gradient-accumulation chunks of our update (memory only: the gradient
      is the same); must divide the number of prompts (micro-batches hold whole groups).
  """

  model_dir: str
  out_dir: str
  steps: int = 5
  num_prompts: int = 8
  preset: Preset = Preset()
  reward: str = "verifiable"
  parity: bool = True
  trl_bf16: bool = False
  cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "pbrl_jax")
  jax_microbatches: int = 1

  def __post_init__(self):
    # Our update runs each group's prompt once, so micro-batches hold whole groups.
    if self.jax_microbatches < 1 or self.num_prompts % self.jax_microbatches:
      raise ValueError(f"jax_microbatches {self.jax_microbatches} must divide the number of"
                       f" prompts {self.num_prompts} (micro-batches hold whole groups)")


def make_reward_func(kind: str) -> RewardFunc:
  """The reward callable both sides call."""
  if kind == "verifiable":
    return verifiable_reward_func
  from configs import reward_defaults  # pylint: disable=g-import-not-at-top
  from pbrl_jax.rewards import RewardSpec  # pylint: disable=g-import-not-at-top
  # The reward section users train with, only its kind changed.
  cfg = reward_defaults.get_config()
  cfg.kind = kind
  return make_semantic_reward_func(RewardSpec.from_config(cfg))


def run(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs parity, both training loops and the speed summary; writes the reports.

  Files in `opts.out_dir`: results.json (every number), report.md, curves.png (when steps > 0).

  Returns:
    The results dict (as written to results.json).
  """
  import torch
  import transformers
  import trl

  os.makedirs(opts.out_dir, exist_ok=True)
  source_dir = opts.model_dir or default_model_dir(opts.cache_dir)
  model_dir = trl_loadable_dir(source_dir, opts.out_dir)
  prompts = select_prompts(opts.num_prompts)
  preset = opts.preset
  reward_func = make_reward_func(opts.reward)
  result: dict[str, Any] = {
      # Home shortened to '~': the results are shared, this machine's paths are not.
      "model": os.path.abspath(source_dir).replace(os.path.expanduser("~"), "~", 1),
      "model_name": os.path.basename(os.path.abspath(source_dir)),
      "num_prompts": len(prompts), "steps": opts.steps, "reward": opts.reward,
      "jax_microbatches": opts.jax_microbatches,
      "trl_dtype": "bfloat16 autocast" if opts.trl_bf16 else "float32",
      "preset": dataclasses.asdict(preset), "preset_table": preset_table(preset),
      "prompts": [dataclasses.asdict(p) for p in prompts],
      "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                   "torch": torch.__version__, "jax": jax.__version__},
      "devices": {"jax": str(jax.devices()[0].platform), "torch_threads":
                  torch.get_num_threads()},
  }
  log(f"model {source_dir}; {len(prompts)} prompts x {preset.num_generations}; seed {preset.seed}")
  log(preset_table(preset))

  side = build_jax_side(model_dir, preset, len(prompts), opts.jax_microbatches)
  torch.manual_seed(preset.seed)
  trainer = build_trl_trainer(model_dir, preset, prompts, reward_func, max(opts.steps, 1),
                              os.path.join(opts.out_dir, "trl_output"), bf16=False)
  if opts.parity:
    t0 = time.perf_counter()
    result["parity"] = step_parity(trainer, side, prompts, reward_func)
    log(f"parity: max relative error to TRL {result['parity']['max_rel_err']:.2e} "
        f"({'PASS' if result['parity']['passed'] else 'FAIL'}, "
        f"{time.perf_counter() - t0:.1f} s)")

  if opts.steps > 0:
    if opts.trl_bf16:
      torch.manual_seed(preset.seed)
      trainer = build_trl_trainer(model_dir, preset, prompts, reward_func, opts.steps,
                                  os.path.join(opts.out_dir, "trl_output"), bf16=True)
    log(f"TRL: {opts.steps} steps")
    result["trl_steps"] = run_trl(trainer)
    log(f"pbrl_jax: {opts.steps} steps")
    result["jax_steps"] = [jax_train_step(side, prompts, reward_func, i)
                           for i in range(opts.steps)]
    trl_speed = speed_summary(result["trl_steps"], TRL_PHASES)
    jax_speed = speed_summary(result["jax_steps"], JAX_PHASES)
    ratio = jax_speed["completion_tokens_per_second"] / trl_speed["completion_tokens_per_second"]
    result["speed"] = {"trl": trl_speed, "jax": jax_speed, "tokens_per_second_ratio": ratio,
                       "timing_note": "steady state = median of steps after the first; TRL "
                       "backward_optimizer = step - (generation + reward + reference_forward "
                       "+ policy_forward)"}
    plot_curves(result, os.path.join(opts.out_dir, "curves.png"))

  report = markdown_report(result)
  atomic_write(os.path.join(opts.out_dir, "results.json"),
               json.dumps(result, indent=2, default=float))
  atomic_write(os.path.join(opts.out_dir, "report.md"), report)
  log(f"wrote {opts.out_dir}/results.json, report.md" + (", curves.png" if opts.steps else ""))
  return result
