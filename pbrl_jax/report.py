"""A run report: `report.md` with per-language tables and PNG plots, from the run's files.

Reads `metrics.jsonl` (one object per step) and, when present, `eval_before.json` /
`eval_after.json` written by the trainer's evaluation. Metric names follow the trainer:
`reward_mean`, `reward/<component>`, `lang/<code>/<metric>`, `rollout/<metric>`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from pbrl_jax import metrics as metrics_lib


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r["step"], r[key]) for r in rows
         if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
  if not pts:
    return np.zeros(0), np.zeros(0)
  steps, vals = zip(*pts)
  return np.asarray(steps), np.asarray(vals, dtype=float)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
  if len(values) < window or window <= 1:
    return values
  kernel = np.ones(window) / window
  padded = np.concatenate([np.full(window - 1, values[0]), values])
  return np.convolve(padded, kernel, mode="valid")


def _plot_lines(path: str, rows, keys: Sequence[str], title: str, ylabel: str) -> bool:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  drawn = False
  for key in keys:
    steps, vals = _series(rows, key)
    if len(steps) == 0:
      continue
    window = max(1, len(vals) // 10)
    line, = ax.plot(steps, vals, alpha=0.3)
    ax.plot(steps, _smooth(vals, window), color=line.get_color(), label=key)
    drawn = True
  if not drawn:
    plt.close(fig)
    return False
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)
  plt.close(fig)
  return True


def _plot_before_after(path: str, before: dict, after: dict, metric: str, title: str) -> bool:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  langs = sorted(set(before) | set(after))
  if not langs:
    return False
  x = np.arange(len(langs))
  fig, ax = plt.subplots(figsize=(7, 4))
  get = lambda d, l: float(d.get(l, {}).get(metric, np.nan))
  ax.bar(x - 0.2, [get(before, l) for l in langs], 0.4, label="before")
  ax.bar(x + 0.2, [get(after, l) for l in langs], 0.4, label="after")
  ax.set_xticks(x, langs)
  ax.set_ylabel(metric)
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)
  plt.close(fig)
  return True


def first_last_fraction(rows, key: str, fraction: float = 0.2) -> tuple[float, float]:
  """Mean of `key` over the first and the last `fraction` of steps."""
  _, vals = _series(rows, key)
  if len(vals) == 0:
    return float("nan"), float("nan")
  n = max(1, int(round(len(vals) * fraction)))
  return float(np.mean(vals[:n])), float(np.mean(vals[-n:]))


def change_and_stderr(rows, key: str, fraction: float = 0.2) -> tuple[float, float]:
  """(last - first mean, its standard error from the step-to-step spread in each window).

  SE = sqrt(var_first / n + var_last / n) with the sample variance (ddof 1) of the per-step
  values; nan when a window has fewer than two steps.
  """
  _, vals = _series(rows, key)
  n = max(1, int(round(len(vals) * fraction)))
  if len(vals) < 2 * n or n < 2:
    return float("nan"), float("nan")
  first, last = vals[:n], vals[-n:]
  se = float(np.sqrt(np.var(first, ddof=1) / n + np.var(last, ddof=1) / n))
  return float(np.mean(last) - np.mean(first)), se


def _cell(text: str, limit: int = 240) -> str:
  """One markdown table cell: newlines shown as ⏎, pipes escaped, long text cut."""
  text = text.strip()
  cut = text[:limit] + (" …" if len(text) > limit else "")
  return cut.replace("|", "\\|").replace("\n", " ⏎ ")


def _samples_table(samples: Sequence[dict[str, Any]]) -> list[str]:
  """First and last logged completion of each language, with its reward and checks."""
  if not samples:
    return []
  by_lang: dict[str, list[dict[str, Any]]] = {}
  for s in samples:
    by_lang.setdefault(s.get("lang", "?"), []).append(s)
  lines = ["## Sample completions (first and last step of each language)", "",
           "One completion per prompt is logged every step in `samples.jsonl`; ⏎ is a line "
           "break. `match`: the final answer equals the pivot's; `lang`: written in the "
           "question's language (`?`: undetermined).", "",
           "| lang | step | reward | match | lang | tokens | completion |",
           "|---|---|---|---|---|---|---|"]
  for lang in sorted(by_lang):
    seq = sorted(by_lang[lang], key=lambda s: s["step"])
    picks = [seq[0]] if len(seq) == 1 else [seq[0], seq[-1]]
    for s in picks:
      lang_mark = ("?" if s.get("language_undetermined") else
                   "yes" if s.get("language_consistent") else "no")
      capped = " (capped)" if s.get("capped") else ""
      lines.append(f"| {lang} | {s['step']} | {s.get('reward', float('nan')):.3f} | "
                   f"{'yes' if s.get('answer_match') else 'no'} | {lang_mark} | "
                   f"{s.get('length', '')}{capped} | {_cell(s.get('text', ''))} |")
  lines.append("")
  return lines


def _load_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_report(workdir: str, title: str = "pbrl_jax run") -> str:
  """Writes `workdir/report.md` and its PNG plots; returns the report path."""
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  keys = sorted({k for r in rows for k in r})
  lines = [f"# {title}", ""]
  lines.append(f"{len(rows)} training steps logged in `metrics.jsonl`.")
  lines.append("")

  lines.append("## Learning signal (first 20% of steps vs last 20%)")
  lines.append("")
  lines.append("| metric | first 20% | last 20% | change | SE of change |")
  lines.append("|---|---|---|---|---|")
  summary_keys = (["reward_mean", "reward_shaped_mean", "sft/nll", "kl"]
                  + [k for k in keys if k.startswith(("reward/", "rollout/"))])
  for key in summary_keys:
    a, b = first_last_fraction(rows, key)
    if np.isfinite(a):
      _, se = change_and_stderr(rows, key)
      se_text = f"{se:.4f}" if np.isfinite(se) else ""
      lines.append(f"| {key} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {se_text} |")
  lines.append("")
  lines.append("SE: the standard error of the change from the step-to-step spread inside each "
               "window; a change under twice its SE is within step noise.")
  lines.append("")

  plots = []
  main_terms = ["reward_mean", "reward/answer_precision", "reward/format",
                "reward/reasoning_coherence",
                "reward/similarity", "reward/mt_similarity", "reward/verifiable", "reward/gate"]
  if _plot_lines(os.path.join(workdir, "reward.png"), rows,
                 [k for k in main_terms if k in keys], "Reward and its components", "value"):
    plots.append(("Reward and its components", "reward.png"))
  if _plot_lines(os.path.join(workdir, "guards.png"), rows,
                 [k for k in keys if k.startswith("reward/gate_")],
                 "Guard gates (1 = no penalty)", "gate"):
    plots.append(("Guard gates", "guards.png"))
  lang_cons = [k for k in keys if k.startswith("lang/") and k.endswith("/language_consistent")]
  if _plot_lines(os.path.join(workdir, "language_consistency.png"), rows, lang_cons,
                 "Language consistency of rollouts", "fraction"):
    plots.append(("Language consistency per language", "language_consistency.png"))
  rollout = [k for k in keys if k.startswith("rollout/")]
  if _plot_lines(os.path.join(workdir, "rollout.png"), rows, rollout,
                 "Rollout health", "fraction / tokens"):
    plots.append(("Rollout health (length cap, repetition)", "rollout.png"))
  if _plot_lines(os.path.join(workdir, "kl_loss.png"), rows, ["loss", "kl"], "Loss and KL",
                 "value"):
    plots.append(("Loss and KL to the reference", "kl_loss.png"))

  langs = sorted({k.split("/")[1] for k in keys if k.startswith("lang/")})
  if langs:
    lines.append("## Per-language training metrics (first 20% -> last 20%)")
    lines.append("")
    metrics_per_lang = sorted({k.split("/", 2)[2] for k in keys if k.startswith("lang/")})
    lines.append("| lang | " + " | ".join(metrics_per_lang) + " |")
    lines.append("|---|" + "---|" * len(metrics_per_lang))
    for lang in langs:
      cells = []
      for m in metrics_per_lang:
        a, b = first_last_fraction(rows, f"lang/{lang}/{m}")
        cells.append(f"{a:.3f} -> {b:.3f}" if np.isfinite(a) else "")
      lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines.append("")

  before = _load_json(os.path.join(workdir, "eval_before.json"))
  after = _load_json(os.path.join(workdir, "eval_after.json"))
  if before or after:
    before_langs = (before or {}).get("per_language", {})
    after_langs = (after or {}).get("per_language", {})
    lines.append("## Evaluation before and after training (held-out questions)")
    lines.append("")
    lines.append("Accuracy with its 95% bootstrap interval; `in language`: answers written in "
                 "the question's language, of those whose language could be told "
                 "(`undetermined`: letterless or nearly wordless answers); `capped`: cut by the "
                 "token limit.")
    lines.append("")
    lines.append("| lang | n | accuracy before | accuracy after | in language before -> after "
                 "| undetermined before -> after | capped before -> after |")
    lines.append("|---|---|---|---|---|---|---|")

    def acc(d: dict) -> str:
      if "accuracy" not in d:
        return ""
      lo, hi = d.get("ci_low"), d.get("ci_high")
      ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
      return f"{d['accuracy']:.3f}{ci}"

    def pair(a: dict, b: dict, key: str) -> str:
      fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) and np.isfinite(v) else "-"
      return f"{fmt(a.get(key))} -> {fmt(b.get(key))}"

    for lang in sorted(set(before_langs) | set(after_langs)):
      a, b = before_langs.get(lang, {}), after_langs.get(lang, {})
      lines.append(f"| {lang} | {b.get('n', a.get('n', ''))} | {acc(a)} | {acc(b)} | "
                   f"{pair(a, b, 'language_consistent_determined')} | "
                   f"{pair(a, b, 'language_undetermined')} | {pair(a, b, 'length_capped')} |")
    summaries = [(before or {}).get("summary", {}), (after or {}).get("summary", {})]
    for key, label in (("trained_mean", "trained languages"), ("held_out_mean", "held out"),
                       ("english_accuracy", "English"), ("gap", "gap (English - rest)")):
      vals = [sm.get(key) for sm in summaries]
      if any(isinstance(v, (int, float)) for v in vals):
        lines.append(f"| *{label}* | | " + " | ".join(
            f"{v:.3f}" if isinstance(v, (int, float)) else "" for v in vals) + " | | | |")
    lines.append("")
    for metric, name in (("accuracy", "eval_accuracy.png"), ("reward", "eval_reward.png"),
                         ("language_consistent", "eval_language.png")):
      if _plot_before_after(os.path.join(workdir, name), before_langs, after_langs, metric,
                            f"Held-out {metric} per language"):
        plots.append((f"Held-out {metric} per language, before and after", name))

  samples_path = os.path.join(workdir, metrics_lib.SAMPLES_FILE)
  if os.path.exists(samples_path):
    lines.extend(_samples_table(metrics_lib.read_jsonl(samples_path)))

  if plots:
    lines.append("## Plots")
    lines.append("")
    for caption, name in plots:
      lines.append(f"### {caption}")
      lines.append(f"![{caption}]({name})")
      lines.append("")
  path = os.path.join(workdir, "report.md")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  os.replace(tmp, path)
  return path
