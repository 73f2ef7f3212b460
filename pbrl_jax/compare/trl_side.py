"""pbrl-compare, TRL's side: its trainer, offline, and phase timers around its methods."""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Sequence


from pbrl_jax.models.tokenizer import load_hf_tokenizer

from pbrl_jax.compare.prompts import Prompt
from pbrl_jax.compare.preset import Preset
from pbrl_jax.compare.jax_side import trl_prompt
from pbrl_jax.compare.common import RewardFunc


# ---------------------------------------------------------------------------------------------
# TRL side: the trainer, offline, and phase timers around its methods.
# ---------------------------------------------------------------------------------------------


def build_trl_trainer(model_dir: str, preset: Preset, prompts: Sequence[Prompt],
                      reward_func: RewardFunc, steps: int, out_dir: str, bf16: bool = False
                      ) -> Any:
  """A GRPOTrainer on CPU over an in-memory dataset; no logging integrations, no hub.

  One optimizer step per generation batch of all prompts x G completions (per-device batch
  = R * G rows, gradient accumulation 1), as our update does.
  """
  import datasets
  import torch
  import trl

  tokenizer = load_hf_tokenizer(model_dir)
  rows = [{"prompt": trl_prompt(tokenizer, p), "answer": p.answer, "lang": p.lang,
           "reference": p.reference, "question": p.question} for p in prompts]
  args = trl.GRPOConfig(
      output_dir=out_dir, per_device_train_batch_size=len(prompts) * preset.num_generations,
      gradient_accumulation_steps=1, max_steps=steps, logging_steps=1, report_to=[],
      save_strategy="no", use_cpu=True, bf16=bf16, fp16=False, gradient_checkpointing=False,
      disable_dropout=True, shuffle_dataset=False, dataloader_num_workers=0, disable_tqdm=True,
      log_completions=False, push_to_hub=False,
      model_init_kwargs={"dtype": torch.bfloat16 if bf16 else torch.float32},
      **preset.trl_kwargs())
  trainer = trl.GRPOTrainer(model=model_dir, reward_funcs=reward_func, args=args,
                            train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tokenizer)
  # transformers builds the input embedding with `padding_idx = pad_token_id`, and PyTorch
  # then drops the input-side gradient of that row, also where the token is real (SmolLM2's
  # pad is its <|im_end|>, which every chat turn contains). The true gradient keeps it, as
  # ours does; unset padding_idx so both sides differentiate the same function.
  for module in trainer.model.modules():
    if isinstance(module, torch.nn.Embedding):
      module.padding_idx = None
  return trainer


class TrlPhaseTimer:
  """Wall-clock seconds per phase of each TRL step, by wrapping the trainer's own methods.

  generation: `_generate_single_turn` (transformers `generate`); reward: `_calculate_rewards`;
  reference_forward / policy_forward: `_get_per_token_logps_and_entropies` on the reference
  model / on the policy; backward_optimizer: the rest of the step (backward, clipping,
  optimizer, bookkeeping), i.e. step - the phases above. A step is on_step_begin ->
  on_step_end of the transformers Trainer loop.
  """

  PHASES = ("generation", "reward", "reference_forward", "policy_forward")

  def __init__(self, trainer: Any):
    import transformers
    self.trainer = trainer
    self.acc = dict.fromkeys(self.PHASES, 0.0)
    self.completion_tokens = 0
    self.steps: list[dict[str, float]] = []
    self._t0 = 0.0
    self._wrap("_generate_single_turn", self._generation)
    self._wrap("_calculate_rewards", lambda orig, *a, **k: self._time("reward", orig, *a, **k))
    self._wrap("_get_per_token_logps_and_entropies", self._logps)
    timer = self

    class _Callback(transformers.TrainerCallback):

      def on_step_begin(self, args, state, control, **kwargs):
        timer._begin()

      def on_step_end(self, args, state, control, **kwargs):
        timer._end()

    trainer.add_callback(_Callback())

  def _wrap(self, name: str, wrapper: Callable[..., Any]) -> None:
    orig = getattr(self.trainer, name)
    setattr(self.trainer, name, functools.partial(wrapper, orig))

  def _time(self, phase: str, orig: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    try:
      return orig(*args, **kwargs)
    finally:
      self.acc[phase] += time.perf_counter() - t0

  def _generation(self, orig: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    completion_ids, logprobs = self._time("generation", orig, *args, **kwargs)
    self.completion_tokens += sum(len(c) for c in completion_ids)
    return completion_ids, logprobs

  def _logps(self, orig: Callable[..., Any], model: Any, *args: Any, **kwargs: Any) -> Any:
    phase = ("reference_forward" if model is self.trainer.ref_model else "policy_forward")
    return self._time(phase, orig, model, *args, **kwargs)

  def _begin(self) -> None:
    self.acc = dict.fromkeys(self.PHASES, 0.0)
    self.completion_tokens = 0
    self._t0 = time.perf_counter()

  def _end(self) -> None:
    total = time.perf_counter() - self._t0
    rec = {f"time_{k}": v for k, v in self.acc.items()}
    rec["time_backward_optimizer"] = max(total - sum(self.acc.values()), 0.0)
    rec["time_update"] = rec["time_policy_forward"] + rec["time_backward_optimizer"]
    rec["time_step"] = total
    rec["completion_tokens"] = self.completion_tokens
    self.steps.append(rec)


def run_trl(trainer: Any) -> list[dict[str, float]]:
  """Trains and returns one record per step: TRL's logged metrics plus the phase timings."""
  timer = TrlPhaseTimer(trainer)
  trainer.train()
  logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
  out = []
  for i, rec in enumerate(timer.steps):
    h = logs[i] if i < len(logs) else {}
    n = rec["completion_tokens"]
    rows = trainer.args.per_device_train_batch_size
    out.append({
        "step": i + 1, "reward_mean": h.get("reward", math.nan),
        "reward_std": h.get("reward_std", math.nan),
        "frac_reward_zero_std": h.get("frac_reward_zero_std", math.nan),
        "kl": h.get("kl", 0.0), "loss": h.get("loss", math.nan),
        "grad_norm": h.get("grad_norm", math.nan), "entropy": h.get("entropy", math.nan),
        "clip_frac_low": h.get("clip_ratio/low_mean", math.nan),
        "clip_frac_high": h.get("clip_ratio/high_mean", math.nan),
        "completion_mean_length": n / rows, **rec})
  return out
