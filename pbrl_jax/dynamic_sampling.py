"""DAPO's dynamic sampling, an optional stage between the reward and the advantages.

Groups whose rewards are all equal get zero advantages and teach nothing; this stage
replaces them with the informative groups of further prompt batches (`rl.dynamic_sampling_batches`
of them at most) and scores the assembled batch again (`pbrl_jax.stages` for the stages).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from pbrl_jax import metrics as metrics_lib
from pbrl_jax.stages import (PromptBatch, Rewards, Rollout, Scored, StepFns, reward_stage,
                             rollout_stage, score_stage, set_completion_width)


def informative_groups(shaped: np.ndarray, g: int) -> np.ndarray:
  """[B] True where a group's rewards (as the advantages see them) are not all equal: a group
  of equal rewards gets zero advantages and teaches nothing."""
  r = np.asarray(shaped, np.float64).reshape(-1, g)
  return r.max(axis=1) > r.min(axis=1)


def _left_widen(x: np.ndarray, width: int, fill: Any) -> np.ndarray:
  """Left-pads the last axis of [N, P] (or the prompt part of [N, P+M]) to `width` more."""
  return np.pad(x, [(0, 0), (width, 0)], constant_values=fill) if width else x


def select_groups(parts: Sequence[tuple[PromptBatch, Rollout]],
                  picks: Sequence[tuple[int, int]], pad_id: int
                  ) -> tuple[PromptBatch, Rollout]:
  """One (PromptBatch, Rollout) of the groups `picks` = [(part, group)] in that order.

  Parts may come from different prompt buckets and completion widths: every prompt is
  left-padded to the widest, every completion right-padded to the widest (padding is never
  attended to, so each row's completion and log-probs are unchanged).
  """
  g = parts[0][0].group_size
  width = max(p.prompt_tokens.shape[1] for p, _ in parts)
  # Each draw's completions were cut to their own longest (`stages.completion_width`).
  m = max(r.completion_mask.shape[1] for _, r in parts)
  parts = [(p, set_completion_width(r, m, pad_id)) for p, r in parts]
  prompt_rows, rollout_rows = [], []
  for k, i in picks:
    p, r = parts[k]
    extra = width - p.prompt_tokens.shape[1]
    prompt_rows.append((p, i, extra))
    rollout_rows.append((r, range(i * g, (i + 1) * g), extra))
  first = parts[0][0]
  prompts = PromptBatch(
      prompt_tokens=np.concatenate([_left_widen(p.prompt_tokens[i:i + 1], e, pad_id)
                                    for p, i, e in prompt_rows]),
      prompt_valid=np.concatenate([_left_widen(p.prompt_valid[i:i + 1], e, False)
                                   for p, i, e in prompt_rows]),
      group_size=g,
      **{f: tuple(getattr(p, f)[i] for p, i, _ in prompt_rows)
         for f in ("ids", "langs", "questions", "gold", "reference", "reference_answer")},
      ref_emb={key: np.stack([p.ref_emb[key][i] for p, i, _ in prompt_rows])
               for key in first.ref_emb})
  rows = lambda f: [getattr(r, f)[list(idx)] for r, idx, _ in rollout_rows]
  rollout = Rollout(
      tokens=np.concatenate([_left_widen(r.tokens[list(idx)], e, pad_id)
                             for r, idx, e in rollout_rows]),
      valid=np.concatenate([_left_widen(r.valid[list(idx)], e, False)
                            for r, idx, e in rollout_rows]),
      completion_mask=np.concatenate(rows("completion_mask")),
      sampler_logp=np.concatenate(rows("sampler_logp")),
      texts=tuple(r.texts[j] for r, idx, _ in rollout_rows for j in idx),
      finished=np.concatenate(rows("finished")), lengths=np.concatenate(rows("lengths")),
      langs=tuple(r.langs[j] for r, idx, _ in rollout_rows for j in idx))
  assert rollout.tokens.shape[1] == width + m
  return prompts, rollout


def select_rewards(parts: Sequence[Rewards], picks: Sequence[tuple[int, int]], g: int
                   ) -> Rewards:
  """The rewards of the groups `picks` = [(part, group)], in the order `select_groups` puts
  them: the very values the selection read, so a kept group stays informative."""
  rows = [range(i * g, (i + 1) * g) for _, i in picks]
  take = lambda f: np.concatenate([getattr(parts[k], f)[list(r)]
                                   for (k, _), r in zip(picks, rows)])
  return Rewards(rows=tuple(parts[k].rows[j] for (k, _), r in zip(picks, rows) for j in r)
                 if all(p.rows for p in parts) else (),
                 rewards=take("rewards"), overlong=take("overlong"))


def dynamic_sampling_stage(fns: StepFns, state: Any, prompts: PromptBatch, rollout: Rollout,
                           scored: Scored, rewards: Rewards, step: int,
                           next_prompts: Callable[[], PromptBatch],
                           timer: metrics_lib.StepTimer | None = None
                           ) -> tuple[PromptBatch, Rollout, Scored, Rewards, dict[str, float]]:
  """DAPO's dynamic sampling: groups whose rewards are all equal leave the batch, which is
  refilled with the informative groups of further prompt batches (`next_prompts`), at most
  `rl.dynamic_sampling_batches` of them. Short of B informative groups after that, the
  first batch's uninformative groups fill the rest (zero advantages, as without the option).
  When groups were replaced, the assembled batch is scored again (its log-probs must be the
  batch's); its rewards are the ones each group was selected by (`select_rewards`), so the
  reward, an MT model's included, runs once per completion.

  Returns the step's prompts, rollout, scores and rewards, and the counts:
  dynamic/informative_frac_first (of the first batch), dynamic/informative_frac (of the
  batch trained on), dynamic/extra_batches (batches drawn beyond the first).
  """
  g = prompts.group_size
  b = len(prompts.ids)
  keep = informative_groups(rewards.shaped, g)
  stats = {"dynamic/informative_frac_first": float(np.mean(keep)),
           "dynamic/informative_frac": float(np.mean(keep)), "dynamic/extra_batches": 0.0}
  if keep.all():
    return prompts, rollout, scored, rewards, stats
  parts, part_rewards = [(prompts, rollout)], [rewards]
  picks = [(0, int(i)) for i in np.flatnonzero(keep)]
  draw = 0
  while len(picks) < b and draw < fns.spec.rl.dynamic_sampling_batches:
    draw += 1
    more = next_prompts()
    more_rollout = rollout_stage(fns, state, more, step, draw)
    more_rewards = reward_stage(fns, more_rollout,
                                score_stage(fns, state, more, more_rollout, timer))
    parts.append((more, more_rollout))
    part_rewards.append(more_rewards)
    picks += [(draw, int(i)) for i in np.flatnonzero(informative_groups(more_rewards.shaped, g))]
  informative = min(len(picks), b)
  picks = picks[:b] + [(0, int(i)) for i in np.flatnonzero(~keep)][:max(b - len(picks), 0)]
  stats.update({"dynamic/informative_frac": informative / b,
                "dynamic/extra_batches": float(draw)})
  if draw == 0:  # nothing drawn (the option is off): the batch as it was
    return prompts, rollout, scored, rewards, stats
  prompts, rollout = select_groups(parts, picks, fns.model_cfg.pad_token_id)
  return (prompts, rollout, score_stage(fns, state, prompts, rollout, timer),
          select_rewards(part_rewards, picks, g), stats)
