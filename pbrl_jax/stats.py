"""Statistics of evaluation results: bootstrap intervals, pass@k, paired differences.

Pure NumPy. Percentile bootstrap over questions with a fixed seed, so a result file's
intervals are reproducible; the gap's resamples share question ids across languages.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

# Bootstrap resamples per interval (configs/eval_defaults.py sets the same default).
N_BOOT = 1000
ENGLISH = "en"  # the pivot language: the gap is English minus the mean of the others


def json_float(x: float) -> float | None:
  return None if x is None or not math.isfinite(x) else float(x)


def bootstrap_means(scores: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
  """Means of `n_boot` resamples (with replacement, same size) of `scores`.

  Resample b uses the indices `rng.integers(0, n, size=n)` of the b-th draw of
  `np.random.default_rng(seed)`, so a plain loop reproduces it exactly.

  Args:
    scores: [n] per-example scores (0/1 correctness, or fractions for pass@1).
    n_boot: number of resamples.
    seed: seed of the resampling generator.

  Returns:
    [n_boot] float64 resample means (empty when `scores` is empty).
  """
  x = np.asarray(scores, np.float64).reshape(-1)
  n = x.size
  if n == 0:
    return np.zeros(0)
  rng = np.random.default_rng(seed)
  # Draw resamples in blocks of rows ([rows, n] at a time: the same stream as one draw per
  # resample) so memory stays bounded for large n.
  rows = max(1, (1 << 22) // n)
  out = [x[rng.integers(0, n, size=(min(rows, n_boot - b), n))].mean(axis=1)
         for b in range(0, n_boot, rows)]
  return np.concatenate(out) if out else np.zeros(0)


def bootstrap_ci(correct: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap confidence interval of the mean.

  Args:
    correct: [n] per-example scores in [0, 1].
    n_boot: number of resamples.
    seed: fixed seed, so a result file is reproducible.
    level: coverage of the interval.

  Returns:
    (low, high): the (1-level)/2 and (1+level)/2 percentiles (numpy's default linear
    interpolation) of the resample means; (nan, nan) for no examples.
  """
  means = bootstrap_means(correct, n_boot, seed)
  if means.size == 0:
    return math.nan, math.nan
  alpha = (1.0 - level) / 2.0
  low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
  return float(low), float(high)


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k estimate from n samples of which c are correct (Chen et al., 2021).

  pass@k = 1 - C(n - c, k) / C(n, k): the probability that a uniformly random k-subset of
  the n samples holds at least one correct one. Computed as the stable product
  1 - prod_{i = n-c+1}^{n} (1 - k / i) (the paper's numpy form).

  Args:
    n: samples drawn (n >= 1).
    c: correct samples, 0 <= c <= n.
    k: 1 <= k <= n.

  Returns:
    The estimate in [0, 1].
  """
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_k_values(num_samples: int) -> tuple[int, ...]:
  """The k reported for G samples: powers of two below G, and G itself."""
  ks = [1 << i for i in range(max(num_samples, 1).bit_length()) if (1 << i) < num_samples]
  return tuple(ks + [num_samples])


def bootstrap_gap_ci(scores: Mapping[str, Mapping[str, float]], n_boot: int = N_BOOT,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float]:
  """Bootstrap CI of the gap: English accuracy minus the mean non-English accuracy.

  Questions, not (question, language) pairs, are resampled: one resample draws |U| ids with
  replacement from the union U of every language's ids and each language averages the drawn
  ids it has (with their multiplicity). On parallel data (the same ids in every language, as
  MGSM and GSM-Symbolic) this is a paired bootstrap, which is what the gap between languages
  answering the same questions calls for.

  Args:
    scores: {lang: {id: per-example score}}; must hold 'en' and one other language.
    n_boot: resamples.
    seed: seed of `np.random.default_rng`; counts come from `multinomial(|U|, uniform)`.
    level: coverage.

  Returns:
    (low, high) percentiles over the resamples where every language drew at least one of
    its ids; (nan, nan) when the gap is undefined.
  """
  non_en = sorted(lang for lang in scores if lang != ENGLISH and scores[lang])
  if not scores.get(ENGLISH) or not non_en:
    return math.nan, math.nan
  ids = sorted({i for table in scores.values() for i in table})
  col = {i: k for k, i in enumerate(ids)}
  langs = [ENGLISH] + non_en
  values = np.zeros((len(langs), len(ids)))  # [languages, U]
  present = np.zeros((len(langs), len(ids)))
  for row, lang in enumerate(langs):
    for i, v in scores[lang].items():
      values[row, col[i]] = v
      present[row, col[i]] = 1.0
  rng = np.random.default_rng(seed)
  num, den = [], []
  rows = max(1, (1 << 22) // len(ids))  # bounded memory for large benchmarks
  for b in range(0, n_boot, rows):
    counts = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)),
                             size=min(rows, n_boot - b))  # [rows, U]
    num.append(counts @ (values * present).T)  # [rows, languages]
    den.append(counts @ present.T)
  num, den = np.concatenate(num), np.concatenate(den)
  ok = np.all(den > 0, axis=1)
  if not ok.any():
    return math.nan, math.nan
  means = num[ok] / den[ok]
  gaps = means[:, 0] - means[:, 1:].mean(axis=1)
  alpha = (1.0 - level) / 2.0
  low, high = np.percentile(gaps, [100.0 * alpha, 100.0 * (1.0 - alpha)])
  return float(low), float(high)


def paired_difference_ci(before: Mapping[str, float], after: Mapping[str, float],
                         n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
  """Accuracy change on the questions both runs answered, with a paired bootstrap CI.

  Args:
    before: {id: per-example score} of the first run.
    after: {id: per-example score} of the second run.
    n_boot: resamples.
    seed: bootstrap seed.

  Returns:
    {n (shared ids), delta (mean of after - before over them), ci_low, ci_high}; the CI of
    the mean per-question difference (`bootstrap_ci`), None where there is no shared id.
  """
  shared = sorted(set(before) & set(after))
  diff = np.asarray([after[i] - before[i] for i in shared], np.float64)
  low, high = bootstrap_ci(diff, n_boot, seed)
  return {"n": len(shared), "delta": float(diff.mean()) if shared else None,
          "ci_low": json_float(low), "ci_high": json_float(high)}
