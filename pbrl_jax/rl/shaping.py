"""Reward shaping applied to the sequence rewards before the advantages, and DAPO's overlong
filtering of the loss.

Soft overlong punishment (DAPO, Yu et al. 2025, arXiv 2503.14476, eq. 13): with a length cap
L_max and a buffer L_cache, a completion of |y| tokens receives

  0                                     if |y| <= L_max - L_cache
  ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max

times `penalty`, so a completion cut off at the cap loses the full `penalty`. The semantic
reward says nothing about stopping; without this term a policy that rambles into the cap
(as SmolLM2 does on half or more of the grade-school problems) is not told to stop.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def overlong_penalty(lengths: Array, max_len: int, buffer: int, penalty: float) -> Array:
  """The (non-positive) shaping term of each completion; zeros when `buffer` is 0.

  Args:
    lengths: [N] completion lengths in tokens (at most `max_len`).
    max_len: the rollout's length cap (max_new_tokens).
    buffer: L_cache, tokens before the cap where the penalty ramps up (0: off).
    penalty: the penalty at the cap (DAPO: 1).
  """
  lengths = jnp.asarray(lengths, jnp.float32)
  if buffer <= 0:
    return jnp.zeros_like(lengths)
  if buffer > max_len:
    raise ValueError(f"overlong buffer {buffer} exceeds the length cap {max_len}")
  over = (lengths - (max_len - buffer)) / buffer
  return -penalty * jnp.clip(over, 0.0, 1.0)


def mask_truncated(completion_mask: Array, finished: Array) -> Array:
  """DAPO's overlong filtering (arXiv 2503.14476, section 3.4): truncated rows leave the loss.

  A completion cut by the length cap is not judged on an answer it never finished: its tokens
  are masked out of the policy loss (and out of the token-mean denominators), while its reward
  still counts in its group's baseline. TRL 1.16 calls this `mask_truncated_completions`.

  Args:
    completion_mask: [N, M] 1 on completion tokens.
    finished: [N] true where generation stopped before the cap (EOS or a stop string).

  Returns:
    [N, M] the mask with truncated rows zeroed, in `completion_mask`'s dtype.
  """
  keep = jnp.asarray(finished, bool)[:, None]
  return jnp.where(keep, completion_mask, jnp.zeros_like(completion_mask))
