"""Left padding and length buckets: how prompts become fixed-shape arrays.

Shared by the sampler, the training pipeline and evaluation, so a prompt pads the same way
everywhere and a jitted program sees one of a few bucketed shapes. NumPy only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def left_pad(sequences: Sequence[Sequence[int]], length: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to [B, length]; the one padding helper.

  Args:
    sequences: B lists of token ids, each at most `length` long.
    length: padded length (normally a prompt bucket).
    pad_id: id written into padding slots (never attended to).

  Returns:
    (tokens [B,length] int32, valid [B,length] bool).
  """
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  valid = np.zeros((len(sequences), length), bool)
  for i, seq in enumerate(sequences):
    if len(seq) > length:
      raise ValueError(f"row {i}: {len(seq)} tokens do not fit in length {length}")
    if len(seq):
      tokens[i, length - len(seq):] = np.asarray(seq, np.int32)
      valid[i, length - len(seq):] = True
  return tokens, valid


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
  """The smallest bucket >= n, or None when n exceeds the largest."""
  for b in sorted(buckets):
    if n <= b:
      return b
  return None


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n.

  Raises:
    ValueError: n is larger than every bucket.
  """
  b = bucket_for(n, buckets)
  if b is None:
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")
  return int(b)


def octave_bucket_length(n: int, steps_per_octave: int = 4, minimum: int = 16) -> int:
  """n rounded up to the next of `steps_per_octave` evenly spaced lengths per octave.

  With 4 steps, lengths in (64, 128] round up to 80, 96, 112 or 128: padding wastes at most a
  quarter of a row (a power-of-two bucket wastes up to half), and a set of lengths spread over
  one octave compiles at most 4 programs. Evaluation pads each length-sorted batch this way.
  """
  if n < 1 or steps_per_octave < 1:
    raise ValueError(f"need n >= 1 and steps_per_octave >= 1, got {n}, {steps_per_octave}")
  if n <= minimum:
    return minimum
  octave = 1 << ((n - 1).bit_length() - 1)  # the power of two below n: n in (octave, 2 octave]
  step = max(octave // steps_per_octave, 1)
  return -(-n // step) * step
