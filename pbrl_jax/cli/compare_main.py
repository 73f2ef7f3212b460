"""pbrl-compare: the same GRPO experiment in TRL and in pbrl_jax (parity, curves, speed).

  pbrl-compare --quick                      # writes runs/compare/
  pbrl-compare --quick --out /tmp/compare_quick
  pbrl-compare --steps 10 --out /tmp/compare_smollm2          # SmolLM2-135M-Instruct
  pbrl-compare --model DIR --loss_type dapo --beta 0.0 --out /tmp/compare_dapo
  pbrl-compare --quick --top_entropy_quantile 0.5 --mask_truncated --out /tmp/compare_masks

Writes OUT/results.json (every number), OUT/report.md and OUT/curves.png, and prints the
report. `--quick` uses a tiny random Llama (built into OUT/tiny_model) with 4 prompts, 16
completion tokens and 2 steps unless those flags are given. Exits non-zero when the
step-level parity check fails.
"""

import os

from absl import app
from absl import flags

from pbrl_jax import fileio


def define_flags() -> None:
  """Defines this command's flags when it runs, so that importing the module defines none."""
  global _IS_MODE, _IS_MIN, _IS_MAX, _IS_LEVEL, _ENTROPY_QUANTILE, _MASK_TRUNCATED, _QUICK, _MODEL
  global _OUT, _STEPS, _PROMPTS, _GENERATIONS, _MAX_NEW_TOKENS, _BETA, _LOSS_TYPE, _LR
  global _TEMPERATURE, _EPSILON, _EPSILON_HIGH, _SEED, _REWARD, _PARITY, _TRL_BF16, _CACHE_DIR
  global _JAX_MICROBATCHES
  _QUICK = flags.DEFINE_bool("quick", False, "Tiny random model, a couple of steps (seconds).")
  _MODEL = flags.DEFINE_string("model", "", "HF model directory; default SmolLM2-135M-Instruct.")
  _OUT = flags.DEFINE_string("out", "runs/compare", "Output directory.")
  fileio.refuse_remote("out")
  _STEPS = flags.DEFINE_integer("steps", 5, "Training steps per side (0: parity only).")
  _PROMPTS = flags.DEFINE_integer("prompts", 8, "Prompts per step.")
  _GENERATIONS = flags.DEFINE_integer("generations", 4, "Completions per prompt (G).")
  _MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Completion token limit.")
  _BETA = flags.DEFINE_float("beta", 0.04, "KL coefficient (k3 in the loss).")
  _LOSS_TYPE = flags.DEFINE_enum(
      "loss_type", "grpo", ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo",
                    "vespo"],
      "TRL loss_type; ours: the matching policy loss and aggregation (rl.TRL_LOSS_TYPES).")
  _IS_LEVEL = flags.DEFINE_enum("importance_sampling_level", "token", ["token", "sequence"],
                                "TRL importance_sampling_level ('sequence': GSPO; luspo needs"
                                " it).")
  _ENTROPY_QUANTILE = flags.DEFINE_float(
      "top_entropy_quantile", 1.0, "TRL top_entropy_quantile: the policy term keeps the top"
      " rho of the tokens by entropy (ours: rl.top_entropy_quantile).")
  _MASK_TRUNCATED = flags.DEFINE_bool(
      "mask_truncated", False, "TRL mask_truncated_completions (ours: rl.mask_truncated).")
  _IS_MODE = flags.DEFINE_enum(
      "vllm_importance_sampling_mode", None,
      ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"],
      "TRL's sampler-mismatch correction (ours: rl.rollout_correction); unset: none. The"
      " step parity feeds both losses the same seeded sampler log-probs.")
  _IS_MIN = flags.DEFINE_float("vllm_importance_sampling_clip_min", None,
                               "Lower bound of the correction's ratio (unset: none).")
  _IS_MAX = flags.DEFINE_float("vllm_importance_sampling_clip_max", 3.0,
                               "Upper bound of the correction's ratio (TRL's default).")
  _LR = flags.DEFINE_float("learning_rate", 1e-6, "Constant AdamW learning rate.")
  _TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
  _EPSILON = flags.DEFINE_float("epsilon", 0.2, "Lower clip range.")
  _EPSILON_HIGH = flags.DEFINE_float("epsilon_high", None, "Upper clip range (default epsilon).")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of both sides.")
  _REWARD = flags.DEFINE_enum("reward", "verifiable", ["verifiable", "embedding", "hybrid", "mt"],
                              "Reward callable both sides call (semantic kinds need encoders).")
  _PARITY = flags.DEFINE_bool("parity", True, "Run the step-level parity check.")
  _TRL_BF16 = flags.DEFINE_bool("trl_bf16", False,
                                "Train TRL under bf16 autocast (parity stays fp32).")
  _CACHE_DIR = flags.DEFINE_string(
      "cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "pbrl_jax"),
      "Where the default model's HF directory is cached.")
  _JAX_MICROBATCHES = flags.DEFINE_integer(
      "jax_microbatches", 0, "Gradient-accumulation chunks of pbrl_jax's update (the same "
      "gradient, less activation memory); must divide the number of prompts. 0: the largest "
      "of 4, 2, 1 that does.")

# --quick defaults, used for flags the command line does not set.
QUICK_DEFAULTS = {"steps": 2, "prompts": 4, "max_new_tokens": 16}


def _value(flag: flags.FlagHolder, quick: bool):
  if quick and not flags.FLAGS[flag.name].present and flag.name in QUICK_DEFAULTS:
    return QUICK_DEFAULTS[flag.name]
  return flag.value


def options_from_flags():
  """The comparison's options from the parsed flags (builds the tiny model with --quick)."""
  from pbrl_jax import compare  # pylint: disable=g-import-not-at-top
  quick = _QUICK.value
  out = os.path.abspath(_OUT.value)
  model = _MODEL.value
  if quick and not model:
    model = compare.write_tiny_model(os.path.join(out, "tiny_model"), seed=_SEED.value)
  preset = compare.Preset(
      beta=_BETA.value, loss_type=_LOSS_TYPE.value, num_generations=_GENERATIONS.value,
      temperature=_TEMPERATURE.value, learning_rate=_LR.value,
      max_completion_length=_value(_MAX_NEW_TOKENS, quick), epsilon=_EPSILON.value,
      epsilon_high=_EPSILON.value if _EPSILON_HIGH.value is None else _EPSILON_HIGH.value,
      importance_sampling_level=_IS_LEVEL.value, seed=_SEED.value,
      top_entropy_quantile=_ENTROPY_QUANTILE.value,
      mask_truncated_completions=_MASK_TRUNCATED.value,
      vllm_importance_sampling_mode=_IS_MODE.value,
      vllm_importance_sampling_clip_min=_IS_MIN.value,
      vllm_importance_sampling_clip_max=_IS_MAX.value)
  return compare.Options(model_dir=model, out_dir=out, steps=_value(_STEPS, quick),
                         num_prompts=_value(_PROMPTS, quick), preset=preset,
                         reward=_REWARD.value, parity=_PARITY.value,
                         trl_bf16=_TRL_BF16.value, cache_dir=_CACHE_DIR.value,
                         jax_microbatches=(_JAX_MICROBATCHES.value or
                                           auto_microbatches(_value(_PROMPTS, quick))))


def auto_microbatches(num_prompts: int) -> int:
  """4 chunks when they hold whole prompt groups (SmolLM2's comparison then fits in 24 GB,
  docs/compare.md), else 2, else 1."""
  return next(n for n in (4, 2, 1) if num_prompts % n == 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Offline, no experiment trackers: set before transformers / TRL are imported.
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("WANDB_DISABLED", "true")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  from absl import logging  # pylint: disable=g-import-not-at-top
  from pbrl_jax import compare  # pylint: disable=g-import-not-at-top
  result = compare.run(options_from_flags(), log=logging.info)
  print(compare.markdown_report(result))
  parity = result.get("parity")
  if parity is not None and not parity["passed"]:
    failed = sorted(k for k, c in parity["checks"].items() if not c["passed"])
    raise SystemExit(f"step-level parity failed ({parity['rtol']:g} relative): "
                     f"{', '.join(failed)}; see report.md")


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
