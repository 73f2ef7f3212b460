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

from pbrl_jax import fileio
from pbrl_jax import metrics as metrics_lib
from pbrl_jax.fileio import atomic_savefig, atomic_write


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
  atomic_savefig(fig, path)
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
  atomic_savefig(fig, path)
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
  if not fileio.exists(path):
    return None
  return json.loads(fileio.read_text(path))


def _signal_section(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
  """First vs last 20% of steps for the reward, its components and the rollout health."""
  lines = ["## Learning signal (first 20% of steps vs last 20%)", "",
           "| metric | first 20% | last 20% | change | SE of change |", "|---|---|---|---|---|"]
  summary_keys = (["reward_mean", "reward_shaped_mean", "sft/nll", "kl"]
                  + [k for k in keys if k.startswith(("reward/", "rollout/"))])
  for key in summary_keys:
    a, b = first_last_fraction(rows, key)
    if np.isfinite(a):
      _, se = change_and_stderr(rows, key)
      se_text = f"{se:.4f}" if np.isfinite(se) else ""
      lines.append(f"| {key} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {se_text} |")
  return lines + ["", "SE: the standard error of the change from the step-to-step spread inside"
                  " each window; a change under twice its SE is within step noise.", ""]


def _training_plots(workdir: str, rows: list[dict[str, Any]], keys: list[str]
                    ) -> list[tuple[str, str]]:
  """Writes the training curves; returns (caption, file) of those that had data."""
  main_terms = ["reward_mean", "reward/answer_precision", "reward/format",
                "reward/reasoning_coherence",
                "reward/similarity", "reward/mt_similarity", "reward/verifiable", "reward/gate"]
  has_kl = "kl" in keys  # SFT and beta-0 runs log none (`RLSpec.uses_reference`)
  specs = [
      ("Reward and its components", "reward.png", [k for k in main_terms if k in keys],
       "Reward and its components", "value"),
      ("Guard gates", "guards.png", [k for k in keys if k.startswith("reward/gate_")],
       "Guard gates (1 = no penalty)", "gate"),
      ("Language consistency per language", "language_consistency.png",
       [k for k in keys if k.startswith("lang/") and k.endswith("/language_consistent")],
       "Language consistency of rollouts", "fraction"),
      ("Rollout health (length cap, repetition)", "rollout.png",
       [k for k in keys if k.startswith("rollout/")], "Rollout health", "fraction / tokens"),
      ("Loss and KL to the reference" if has_kl else "Training loss (this run has no KL term)",
       "kl_loss.png", ["loss", "kl"], "Loss and KL" if has_kl else "Loss", "value"),
  ]
  return [(caption, name) for caption, name, series, title, ylabel in specs
          if _plot_lines(os.path.join(workdir, name), rows, series, title, ylabel)]


def _per_language_section(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
  langs = sorted({k.split("/")[1] for k in keys if k.startswith("lang/")})
  if not langs:
    return []
  metrics_per_lang = sorted({k.split("/", 2)[2] for k in keys if k.startswith("lang/")})
  lines = ["## Per-language training metrics (first 20% -> last 20%)", "",
           "| lang | " + " | ".join(metrics_per_lang) + " |",
           "|---|" + "---|" * len(metrics_per_lang)]
  for lang in langs:
    cells = []
    for m in metrics_per_lang:
      a, b = first_last_fraction(rows, f"lang/{lang}/{m}")
      cells.append(f"{a:.3f} -> {b:.3f}" if np.isfinite(a) else "")
    lines.append(f"| {lang} | " + " | ".join(cells) + " |")
  return lines + [""]


def _accuracy_cell(d: dict[str, Any]) -> str:
  if "accuracy" not in d:
    return ""
  lo, hi = d.get("ci_low"), d.get("ci_high")
  ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
  return f"{d['accuracy']:.3f}{ci}"


def _pair_cell(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
  fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) and np.isfinite(v) else "-"
  return f"{fmt(a.get(key))} -> {fmt(b.get(key))}"


def _eval_section(workdir: str) -> tuple[list[str], list[tuple[str, str]]]:
  """The before/after evaluation table and plots, when the run evaluated."""
  before = _load_json(os.path.join(workdir, "eval_before.json"))
  after = _load_json(os.path.join(workdir, "eval_after.json"))
  if not (before or after):
    return [], []
  before_langs = (before or {}).get("per_language", {})
  after_langs = (after or {}).get("per_language", {})
  lines = ["## Evaluation before and after training (held-out questions)", "",
           "Accuracy with its 95% bootstrap interval; `in language`: answers written in the"
           " question's language, of those whose language could be told (`undetermined`:"
           " letterless or nearly wordless answers); `capped`: cut by the token limit.", "",
           "| lang | n | accuracy before | accuracy after | in language before -> after "
           "| undetermined before -> after | capped before -> after |",
           "|---|---|---|---|---|---|---|"]
  for lang in sorted(set(before_langs) | set(after_langs)):
    a, b = before_langs.get(lang, {}), after_langs.get(lang, {})
    lines.append(f"| {lang} | {b.get('n', a.get('n', ''))} | {_accuracy_cell(a)} |"
                 f" {_accuracy_cell(b)} | {_pair_cell(a, b, 'language_consistent_determined')} |"
                 f" {_pair_cell(a, b, 'language_undetermined')} |"
                 f" {_pair_cell(a, b, 'length_capped')} |")
  summaries = [(before or {}).get("summary", {}), (after or {}).get("summary", {})]
  for key, label in (("trained_mean", "trained languages"), ("held_out_mean", "held out"),
                     ("english_accuracy", "English"), ("gap", "gap (English - rest)")):
    vals = [sm.get(key) for sm in summaries]
    if any(isinstance(v, (int, float)) for v in vals):
      lines.append(f"| *{label}* | | " + " | ".join(
          f"{v:.3f}" if isinstance(v, (int, float)) else "" for v in vals) + " | | | |")
  lines.append("")
  plots = []
  for metric, name in (("accuracy", "eval_accuracy.png"), ("reward", "eval_reward.png"),
                       ("language_consistent", "eval_language.png")):
    if _plot_before_after(os.path.join(workdir, name), before_langs, after_langs, metric,
                          f"Held-out {metric} per language"):
      plots.append((f"Held-out {metric} per language, before and after", name))
  return lines, plots


def write_report(workdir: str, title: str = "pbrl_jax run") -> str:
  """Writes `workdir/report.md` and its PNG plots; returns the report path."""
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  keys = sorted({k for r in rows for k in r})
  lines = [f"# {title}", "", f"{len(rows)} training steps logged in `metrics.jsonl`.", ""]
  lines += _signal_section(rows, keys)
  plots = _training_plots(workdir, rows, keys)
  lines += _per_language_section(rows, keys)
  eval_lines, eval_plots = _eval_section(workdir)
  lines += eval_lines
  plots += eval_plots
  samples_path = os.path.join(workdir, metrics_lib.SAMPLES_FILE)
  if fileio.exists(samples_path):
    lines.extend(_samples_table(metrics_lib.read_jsonl(samples_path)))
  if plots:
    lines += ["## Plots", ""]
    for caption, name in plots:
      lines += [f"### {caption}", f"![{caption}]({name})", ""]
  path = os.path.join(workdir, "report.md")
  atomic_write(path, "\n".join(lines))
  return path
