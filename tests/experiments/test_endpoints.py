"""The miniature study's two-level bootstrap against a plain loop, and by hand."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "experiments", "miniature"))
import endpoints  # pylint: disable=wrong-import-position


def _loop_reference(a, b, n_boot, seed):
  """The same replicates, written as nested loops over the drawn indices."""
  rng = np.random.default_rng(seed)
  sa, p, n_lang = a.shape
  sb = b.shape[0]
  out = []
  for _ in range(n_boot):
    probs = rng.integers(0, p, p)
    seeds_a = rng.integers(0, sa, sa)
    seeds_b = rng.integers(0, sb, sb)
    total_a = 0.0
    for s in seeds_a:
      for q in probs:
        total_a += sum(a[s, q, l] for l in range(n_lang)) / n_lang
    total_b = 0.0
    for s in seeds_b:
      for q in probs:
        total_b += sum(b[s, q, l] for l in range(n_lang)) / n_lang
    out.append(total_a / (sa * p) - total_b / (sb * p))
  return np.percentile(out, [2.5, 97.5])


def test_matches_the_loop_reference_in_fp64():
  rng = np.random.default_rng(3)
  a = (rng.random((3, 17, 4)) < 0.4).astype(float)
  b = (rng.random((1, 17, 4)) < 0.25).astype(float)
  got = endpoints.two_level_delta(a, b, n_boot=300, seed=5)
  low, high = _loop_reference(a, b, 300, 5)
  assert got["ci_low"] == pytest.approx(low, abs=1e-9)
  assert got["ci_high"] == pytest.approx(high, abs=1e-9)
  assert got["delta"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
  assert got["ci_low"] < got["delta"] < got["ci_high"]


def test_identical_arms_have_a_zero_interval_and_a_sure_gain_is_positive():
  a = np.zeros((3, 10, 2))
  a[:, :5] = 1.0
  same = endpoints.two_level_delta(a, a[:1], n_boot=200)
  assert same == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_problems": 10,
                  "n_seeds_a": 3, "n_seeds_b": 1}
  # Right on every problem, against a base right on half: +0.5, and every replicate is >= 0
  # (resampling problems only changes how many of the base's misses are drawn).
  better = endpoints.two_level_delta(np.ones((3, 10, 2)), a[:1], n_boot=200)
  assert better["delta"] == 0.5 and better["ci_low"] > 0.0


def test_correctness_table_by_hand_and_missing_records_named():
  recs = [{"id": "q1", "lang": "de", "correct": True}, {"id": "q1", "lang": "fr", "correct": False},
          {"id": "q2", "lang": "de", "correct": False},
          {"id": "q2", "lang": "fr", "samples": [{"correct": True}, {"correct": False}],
           "correct": True}]
  table = endpoints.correctness([recs], ["q1", "q2"], ["de", "fr"])
  np.testing.assert_array_equal(table, [[[1.0, 0.0], [0.0, 0.5]]])
  with pytest.raises(ValueError, match=r"'q3' in 'de'"):
    endpoints.correctness([recs], ["q3"], ["de"])
