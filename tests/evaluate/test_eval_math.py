"""Pure evaluation helpers against plain references: pass@k, bootstrap CIs, k lists."""

import itertools
import math

import numpy as np
import pytest

from pbrl_jax import stats


def _pass_at_k_enumerated(n: int, c: int, k: int) -> float:
  """Share of the k-subsets of n samples (the first c correct) with a correct one."""
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_matches_enumeration_and_binomials(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      got = stats.pass_at_k(n, c, k)
      assert got == pytest.approx(_pass_at_k_enumerated(n, c, k), abs=1e-12), (n, c, k)
      assert got == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_special_cases_and_errors():
  assert stats.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
  assert stats.pass_at_k(10, 0, 5) == 0.0
  assert stats.pass_at_k(10, 6, 5) == 1.0  # every 5-subset meets one of the 6 correct
  assert stats.pass_at_k(200, 13, 100) == pytest.approx(
      1 - math.comb(187, 100) / math.comb(200, 100), rel=1e-9)
  for bad in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
    with pytest.raises(ValueError, match="pass_at_k"):
      stats.pass_at_k(*bad)


def test_pass_k_values():
  assert stats.pass_k_values(1) == (1,)
  assert stats.pass_k_values(2) == (1, 2)
  assert stats.pass_k_values(8) == (1, 2, 4, 8)
  assert stats.pass_k_values(10) == (1, 2, 4, 8, 10)


def test_bootstrap_matches_a_loop_reference():
  scores = np.random.default_rng(7).random(37) < 0.4
  n_boot, seed = 500, 11
  rng = np.random.default_rng(seed)
  ref = np.array([scores[rng.integers(0, scores.size, size=scores.size)].mean()
                  for _ in range(n_boot)])
  np.testing.assert_allclose(stats.bootstrap_means(scores, n_boot, seed), ref, rtol=0, atol=1e-15)
  low, high = stats.bootstrap_ci(scores, n_boot, seed)
  assert (low, high) == (pytest.approx(np.percentile(ref, 2.5), abs=1e-15),
                         pytest.approx(np.percentile(ref, 97.5), abs=1e-15))


def test_bootstrap_ci_is_reproducible_and_sane():
  x = (np.arange(50) % 3 == 0).astype(float)
  assert stats.bootstrap_ci(x, seed=0) == stats.bootstrap_ci(x, seed=0)
  assert stats.bootstrap_ci(x, seed=0) != stats.bootstrap_ci(x, seed=1)
  low, high = stats.bootstrap_ci(x)
  assert low < x.mean() < high
  assert stats.bootstrap_ci(np.ones(9)) == (1.0, 1.0)
  assert stats.bootstrap_ci(np.zeros(9)) == (0.0, 0.0)
  assert all(math.isnan(v) for v in stats.bootstrap_ci(np.zeros(0)))


def test_bootstrap_ci_coverage_and_width():
  """Over many Bernoulli(0.3) data sets of 150, the 95% interval covers 0.3 about 95% of the
  time, and its width is close to the normal approximation's 2 * 1.96 * sd."""
  p, n, trials = 0.3, 150, 300
  data_rng = np.random.default_rng(123)
  covered, widths = 0, []
  for t in range(trials):
    x = (data_rng.random(n) < p).astype(float)
    low, high = stats.bootstrap_ci(x, n_boot=400, seed=t)
    covered += low <= p <= high
    widths.append(high - low)
  assert 0.90 <= covered / trials <= 0.99, covered / trials
  normal = 2 * 1.96 * math.sqrt(p * (1 - p) / n)
  assert abs(np.mean(widths) / normal - 1) < 0.1, (np.mean(widths), normal)


def _gap_ci_loop(scores, n_boot, seed, level=0.95):
  """Loop reference of bootstrap_gap_ci: the same count draws, means by explicit sums."""
  ids = sorted({i for t in scores.values() for i in t})
  counts = np.random.default_rng(seed).multinomial(len(ids), np.full(len(ids), 1 / len(ids)),
                                                   size=n_boot)
  gaps = []
  for row in counts:
    means = {}
    for lang, table in scores.items():
      w = sum(row[ids.index(i)] for i in table)
      if w == 0:
        break
      means[lang] = sum(row[ids.index(i)] * v for i, v in table.items()) / w
    else:
      others = [m for lang, m in means.items() if lang != "en"]
      gaps.append(means["en"] - sum(others) / len(others))
  a = (1 - level) / 2
  return tuple(np.percentile(gaps, [100 * a, 100 * (1 - a)]))


def test_gap_ci_matches_loop_reference_and_is_paired():
  rng = np.random.default_rng(0)
  scores = {"en": {f"q{i}": float(rng.random() < 0.7) for i in range(30)},
            "de": {f"q{i}": float(rng.random() < 0.5) for i in range(30)},
            "th": {f"q{i}": float(rng.random() < 0.3) for i in range(5, 25)}}
  got = stats.bootstrap_gap_ci(scores, n_boot=300, seed=4)
  ref = _gap_ci_loop(scores, 300, 4)
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
  en = np.mean(list(scores["en"].values()))
  gap = en - np.mean([np.mean(list(scores[l].values())) for l in ("de", "th")])
  assert got[0] < gap < got[1]
  # Paired: a language that answers exactly like English gives a zero-width interval.
  same = {"en": scores["en"], "de": dict(scores["en"])}
  assert stats.bootstrap_gap_ci(same, n_boot=200) == (0.0, 0.0)
  assert all(math.isnan(v) for v in stats.bootstrap_gap_ci({"de": scores["de"]}))


def test_paired_difference_ci_uses_shared_ids_only():
  before = {"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0, "only_before": 1.0}
  after = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0, "only_after": 0.0}
  got = stats.paired_difference_ci(before, after, n_boot=300, seed=2)
  diff = np.array([1.0, 0.0, 1.0, -1.0])  # ids a, b, c, d
  assert got["n"] == 4 and got["delta"] == pytest.approx(0.25)
  assert (got["ci_low"], got["ci_high"]) == stats.bootstrap_ci(diff, 300, 2)
  empty = stats.paired_difference_ci({"x": 1.0}, {"y": 1.0})
  assert empty == {"n": 0, "delta": None, "ci_low": None, "ci_high": None}
