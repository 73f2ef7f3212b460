"""Reads the diagnosis experiments' outputs and prints the figures each question needs.

  python experiments/diagnosis/summarize.py runs/diagnosis [--json OUT.json]

For the training runs (F1, F2, F4): first vs last 20% of steps of the reward, its components,
length and the length cap, with the standard error of each change from the step-to-step
spread, and the update-norm ratio u_last / u_1 against the ratio expected of pure noise under
AdamW (the learning diagnosis, section 1.6). For the evaluations (F3): sampled pass@1 at
T = 1.0 and 0.7 against greedy accuracy, trained languages and all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from pbrl_jax import report  # pylint: disable=wrong-import-position

TRAIN_KEYS = ("reward_mean", "reward/base", "reward/answer_match", "reward/answer_precision",
              "reward/reasoning_coherence", "reward/format", "reward/gate_language",
              "reward_shaped_mean", "rollout/mean_length", "rollout/length_capped_frac",
              "rollout/language_consistent_frac", "kl")
TRAIN_LANGS = ("de", "fr", "ru", "zh")


def adamw_noise_ratio(step: int, b1: float = 0.9) -> float:
  """u_t / u_1 for uncorrelated unit gradients under bias-corrected Adam momentum.

  The first moment is a b1-weighted sum of t independent gradients: its norm relative to one
  gradient is sqrt(sum w^2) / sum w with w_k = b1^(t-k) (the second moment normalises the
  scale away). At t = 1 the ratio is 1.
  """
  w = b1 ** np.arange(step)
  return float(np.sqrt(np.sum(w ** 2)) / np.sum(w))


def train_summary(workdir: str) -> dict:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"),
                                            encoding="utf-8") if line.strip()]
  out = {"steps": len(rows)}
  for key in TRAIN_KEYS:
    first, last = report.first_last_fraction(rows, key)
    if math.isfinite(first):
      change, se = report.change_and_stderr(rows, key)
      out[key] = {"first": first, "last": last, "change": last - first, "se": se}
  norms = [r["update_norm"] for r in rows if "update_norm" in r]
  if len(norms) >= 2:
    out["update_norm_ratio"] = norms[-1] / norms[0]
    out["update_norm_ratio_noise"] = adamw_noise_ratio(len(norms))
  steps_with_match = sum(1 for r in rows if r.get("reward/answer_match", 0) > 0)
  out["steps_with_a_correct_answer"] = steps_with_match
  times = [r["time/step"] for r in rows if "time/step" in r]
  out["median_step_s"] = float(np.median(times)) if times else None
  return out


def eval_summary(path: str) -> dict:
  d = json.load(open(path, encoding="utf-8"))["datasets"]["arith"]
  per = d["per_language"]
  trained = [per[x]["accuracy"] for x in TRAIN_LANGS if x in per]
  return {"accuracy_by_lang": {k: v["accuracy"] for k, v in per.items()},
          "trained_mean": float(np.mean(trained)), "all_mean": d["summary"]["micro_accuracy"],
          "format_rate": float(np.mean([("####" in s["response"]) for r in d["records"]
                                        for s in r.get("samples", [r])]))}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("out")
  ap.add_argument("--json", default="")
  args = ap.parse_args(argv)
  result = {}
  for name in ("F1", "F2", "F4"):
    if os.path.exists(os.path.join(args.out, name, "DONE")):
      result[name] = train_summary(os.path.join(args.out, name))
  for name, tag in (("F3_t10", "t10"), ("F3_t07", "t07"), ("F3_t05", "t05"),
                    ("F3_greedy", "greedy")):
    path = os.path.join(args.out, name, "eval", f"{tag}.json")
    if os.path.exists(path):
      result[name] = eval_summary(path)
  for name, res in result.items():
    print(f"== {name}")
    for key, val in res.items():
      if isinstance(val, dict) and "first" in val:
        print(f"  {key:36s} {val['first']:.4f} -> {val['last']:.4f}  change "
              f"{val['change']:+.4f} (SE {val['se']:.4f})")
      elif isinstance(val, dict):
        print(f"  {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(val.items())))
      else:
        print(f"  {key}: {val}")
  if args.json:
    tmp = args.json + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
    os.replace(tmp, args.json)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
