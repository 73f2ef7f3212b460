"""The same GRPO experiment in TRL and in pbrl_jax: matched presets, step parity, curves, speed.

  pbrl-compare --quick --out /tmp/cmp          # tiny random model, seconds
  pbrl-compare --model DIR --steps 10 --out /tmp/cmp

Three measurements, all from one process and one checkpoint:

1. Step-level parity. Completions are sampled once (by the trainer's rollout stage) and fed
   to both sides. TRL's own `GRPOTrainer.compute_loss` and the trainer's loss (its
   `UpdateHParams`, shared prompt on) then compute the first update's per-token log-probs,
   loss and gradient on identical tensors; our log-probs come from the trainer's scoring jit
   and our advantages from its advantage stage. Two probes: at the
   checkpoint (policy == reference, ratio 1), and with a perturbed policy whose old log-probs
   are the reference's, so the k3 KL term, the ratio and the clipping all carry weight.
2. Training curves: N steps of each with sampling on, same prompts, same reward callable,
   matched presets (`Preset`), reward mean, KL and loss per step. Our steps are the
   trainer's stages (`pbrl_jax.stages`) on the spec `Preset.trainer_spec` builds.
3. Speed: seconds per step and completion tokens per second, with a phase breakdown
   (generation, reward, reference forward, update; TRL's update split into policy forward and
   backward + optimizer by wrapping its methods).

Axis letters: R prompts, G completions per prompt, B = R*G rows, P prompt tokens
(left-padded), M completion tokens (right-padded), T = P + M.
"""

# The package's modules, in the order a comparison runs; `run` drives them.
from pbrl_jax.compare.common import PARITY_RTOL, RewardFunc
from pbrl_jax.compare.prompts import (PROMPTS, Prompt, completion_text, make_semantic_reward_func,
                                      select_prompts, verifiable_reward_func)
from pbrl_jax.compare.preset import Preset, preset_table
from pbrl_jax.compare.models import default_model_dir, trl_loadable_dir, write_tiny_model
from pbrl_jax.compare.jax_side import (JaxSide, build_jax_side, call_reward, jax_train_step,
                                       one_device_mesh, prompt_arrays, prompt_batch,
                                       reward_columns, trl_prompt, uses_chat)
from pbrl_jax.compare.trl_side import TrlPhaseTimer, build_trl_trainer, run_trl
from pbrl_jax.compare.parity import GRAD_ABS_LIMIT, PARITY_KEYS, parity_checks, rel_err, step_parity
from pbrl_jax.compare.report import (JAX_PHASES, TRL_PHASES, markdown_report, plot_curves,
                                     speed_summary)
from pbrl_jax.compare.run import Options, make_reward_func, run
