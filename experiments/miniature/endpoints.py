"""The miniature study's endpoints: accuracy differences with a two-level bootstrap.

Primary endpoint: Delta = (method - base) accuracy averaged over the trained languages, seeds
averaged. Its 95% interval comes from a two-level bootstrap: problems are resampled (the same
draw for every language and both arms, since the test problems are parallel across languages
and shared by the arms), then seeds within each arm. One replicate:

  Delta* = mean_{s in S_a*} mean_{p in P*} a[s, p]  -  mean_{s in S_b*} mean_{p in P*} b[s, p]

with a[s, p] the arm's correctness on problem p averaged over the languages, P* a resample of
the problem ids and S_a*, S_b* resamples of each arm's seeds (the base model is one "seed").
The interval is the 2.5 and 97.5 percentiles of Delta* (Efron's percentile interval).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def correctness(records_by_seed: Sequence[Sequence[Mapping[str, Any]]], ids: Sequence[str],
                langs: Sequence[str]) -> np.ndarray:
  """[seeds, problems, languages] 0/1 (the fraction correct for sampled evaluations).

  Raises ValueError naming the first (id, lang) a seed's records lack.
  """
  out = np.zeros((len(records_by_seed), len(ids), len(langs)))
  for s, records in enumerate(records_by_seed):
    table = {}
    for r in records:
      samples = r.get("samples")
      table[(r["id"], r["lang"])] = (np.mean([x["correct"] for x in samples]) if samples
                                     else float(r["correct"]))
    for p, pid in enumerate(ids):
      for l, lang in enumerate(langs):
        if (pid, lang) not in table:
          raise ValueError(f"seed index {s}: no record for problem {pid!r} in {lang!r}")
        out[s, p, l] = table[(pid, lang)]
  return out


def two_level_delta(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                    ) -> dict[str, float]:
  """Delta = mean(a) - mean(b) and its two-level bootstrap interval (module docstring).

  Args:
    a: [S_a, P, L] correctness of arm a (seeds, problems, languages).
    b: [S_b, P, L] the same problems and languages for arm b.
    n_boot: bootstrap replicates.
    seed: their seed.

  Returns:
    {delta, ci_low, ci_high, n_problems, n_seeds_a, n_seeds_b}.
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  if a.shape[1:] != b.shape[1:]:
    raise ValueError(f"arms cover different problems x languages: {a.shape} vs {b.shape}")
  sa, p = a.shape[0], a.shape[1]
  sb = b.shape[0]
  a_sp, b_sp = a.mean(axis=2), b.mean(axis=2)  # [S, P]: languages averaged per problem
  rng = np.random.default_rng(seed)
  w_p = np.zeros((n_boot, p))
  w_a = np.zeros((n_boot, sa))
  w_b = np.zeros((n_boot, sb))
  for i in range(n_boot):  # the draws in a fixed order: problems, then each arm's seeds
    np.add.at(w_p[i], rng.integers(0, p, p), 1.0)
    np.add.at(w_a[i], rng.integers(0, sa, sa), 1.0)
    np.add.at(w_b[i], rng.integers(0, sb, sb), 1.0)
  boot = (np.einsum("bs,sp,bp->b", w_a, a_sp, w_p) / (sa * p)
          - np.einsum("bs,sp,bp->b", w_b, b_sp, w_p) / (sb * p))
  low, high = np.percentile(boot, [2.5, 97.5])
  return {"delta": float(a_sp.mean() - b_sp.mean()), "ci_low": float(low),
          "ci_high": float(high), "n_problems": p, "n_seeds_a": sa, "n_seeds_b": sb}
