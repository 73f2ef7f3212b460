"""The optimizer: AdamW with global-norm clipping and a warmup + cosine/constant schedule.

Master parameters and optimizer moments stay float32 (the decoder's `param_dtype`); compute
runs in `DecoderConfig.dtype`. Weight decay applies to matrices only (ndim >= 2), not to
norm scales, biases or the value head bias.
"""

from __future__ import annotations

import jax
import optax

from pbrl_jax.config_schema import Choice


class Schedule(Choice):
  CONSTANT = "constant"
  COSINE = "cosine"


def make_schedule(kind: Schedule, peak_lr: float, warmup_steps: int, total_steps: int,
                  end_lr_ratio: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then constant or cosine decay to
  `end_lr_ratio * peak_lr` at `total_steps` (counted in optimizer updates)."""
  if kind is Schedule.CONSTANT:
    if warmup_steps <= 0:
      return optax.constant_schedule(peak_lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_lr, warmup_steps), optax.constant_schedule(peak_lr)],
        [warmup_steps])
  if kind is Schedule.COSINE:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=end_lr_ratio * peak_lr)
  raise ValueError(f"unknown schedule {kind}")


def decay_mask(params: optax.Params) -> optax.Params:
  """True for leaves that get weight decay (matrices and stacked matrices)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.0,
                   max_grad_norm: float | None = 1.0) -> optax.GradientTransformation:
  """clip_by_global_norm(max_grad_norm) -> AdamW(schedule, b1, b2, eps, weight_decay)."""
  chain = []
  if max_grad_norm is not None and max_grad_norm > 0:
    chain.append(optax.clip_by_global_norm(max_grad_norm))
  chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*chain)
