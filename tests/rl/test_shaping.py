"""DAPO's soft overlong punishment against a loop over the paper's piecewise definition."""

import numpy as np
import pytest

from pbrl_jax.rl import shaping


def _reference(lengths, max_len, buffer, penalty):
  out = []
  for n in lengths:
    if n <= max_len - buffer:
      out.append(0.0)
    elif n <= max_len:
      out.append(penalty * ((max_len - buffer) - n) / buffer)
    else:
      out.append(-penalty)
  return np.asarray(out)


@pytest.mark.parametrize("max_len,buffer,penalty", [(96, 32, 1.0), (16, 16, 0.5), (64, 1, 2.0)])
def test_matches_piecewise_definition(max_len, buffer, penalty):
  lengths = np.arange(0, max_len + 1)
  got = np.asarray(shaping.overlong_penalty(lengths, max_len, buffer, penalty))
  np.testing.assert_allclose(got, _reference(lengths, max_len, buffer, penalty), atol=1e-6)
  assert got[-1] == pytest.approx(-penalty)  # cut off at the cap: the full penalty
  assert got[max_len - buffer] == 0.0


def test_off_and_bad_buffer():
  np.testing.assert_array_equal(shaping.overlong_penalty(np.array([5, 96]), 96, 0, 1.0), 0.0)
  with pytest.raises(ValueError, match="exceeds the length cap"):
    shaping.overlong_penalty(np.array([5]), 16, 32, 1.0)


def test_mask_truncated_against_a_loop():
  rng = np.random.default_rng(0)
  mask = (rng.random((6, 5)) < 0.7).astype(np.float32)
  finished = np.array([True, False, True, True, False, True])
  got = np.asarray(shaping.mask_truncated(mask, finished))
  want = mask.copy()
  for i in range(6):
    for t in range(5):
      if not finished[i]:
        want[i, t] = 0.0
  np.testing.assert_array_equal(got, want)
  assert got.dtype == mask.dtype
