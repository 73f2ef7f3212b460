"""The paper's comparison in miniature: base, SFT, RLVR (GRPO, PPO) and PB-RLSVR variants.

  python experiments/miniature/run.py --out runs/miniature            # the study (hours)
  python experiments/miniature/run.py --out /tmp/mini --methods sft,pbrl_hybrid --seeds 0,1
  python experiments/miniature/run.py --out /tmp/smoke --smoke        # tiny random model

Arms (configs/miniature.py, version 3): SFT with one seed, RLVR-GRPO and PB-RLSVR hybrid and
embedding with three seeds each, under identical rollout settings, all starting from the
premise (English SFT). For each method and seed: `pbrl-pivot --references` (the English
oracle references of the training problems, embedded once), `pbrl-train`, then `pbrl-eval`
of the final checkpoint on the held-out test problems in every language. The base model is
evaluated once. Each finished stage leaves its output file, so a rerun skips it (delete the
file to redo a stage). After every stage it writes OUT/results.json and OUT/results.md (the
page, which lists the stages still pending) and, without --smoke, copies the page and its
plot to experiments/miniature/ for the repository: a study that takes several sittings is
committed stage by stage and continued elsewhere with --reuse. The page holds every arm
finished so far (in the reused file or evaluated in OUT), not only those this run asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from configs import miniature  # pylint: disable=g-import-not-at-top,wrong-import-position
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import endpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from pbrl_jax import fileio  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = os.path.join(REPO, "configs", "miniature.py")
DATASET = "arith"
# Seeds per RL arm in the study's design (issue: three, for a two-level bootstrap).
DESIGN_SEEDS = 3


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


_STAGE_SECONDS: list[float] = []  # wall time of every stage this invocation ran


def _run(cmd: Sequence[str], log_path: str) -> None:
  """Runs a stage; its output goes to a log file, whose tail is shown when it fails."""
  _log(" ".join(cmd))
  t0 = time.time()
  env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                          check=False)
  if proc.returncode:
    with open(log_path, encoding="utf-8") as f:
      tail = f.read()[-3000:]
    raise RuntimeError(f"stage failed (exit {proc.returncode}), log {log_path}:\n{tail}")
  _STAGE_SECONDS.append(time.time() - t0)


def _config_arg(method: str, data_dir: str, smoke: bool, init: str | None = None) -> str:
  arg = f"{CONFIG}:{method},data_dir={data_dir}"
  if init:
    arg += f",init={init}"
  return arg + ",smoke=1" if smoke else arg


def arm_dir(out: str, method: str, seed: int) -> str:
  return os.path.join(out, f"{method}-s{seed}")


def final_eval(workdir: str) -> str:
  """The arm's evaluation file: its existence marks the arm finished."""
  return os.path.join(workdir, "eval", "final.json")


def _eval_result(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)["datasets"][DATASET]


def run_method(method: str, seed: int, out: str, data_dir: str, steps: int | None,
               smoke: bool, init: str | None = None, workdir: str | None = None,
               evaluate: bool = True) -> dict[str, Any] | None:
  """Pivot, train and evaluate one method with one seed; returns the evaluation result.

  `init`: an HF directory to start from instead of the embedded policy (the premise).
  `evaluate=False`: pivot and train only (returns None).
  """
  workdir = workdir or arm_dir(out, method, seed)
  os.makedirs(workdir, exist_ok=True)
  cfg = _config_arg(method, data_dir, smoke, init)
  overrides = [f"--config.seed={seed}"] + ([f"--config.total_steps={steps}"] if steps else [])
  py = sys.executable
  if not os.path.exists(os.path.join(workdir, "pivot", "manifest.json")):
    _run([py, "-m", "pbrl_jax.cli.pivot_main", f"--config={cfg}", f"--workdir={workdir}",
          f"--references={os.path.join(data_dir, 'train_references.jsonl')}"],
         os.path.join(workdir, "pivot.log"))
  result = final_eval(workdir)
  if not os.path.exists(result):
    t0 = time.time()
    _run([py, "-m", "pbrl_jax.cli.train_main", f"--config={cfg}", f"--workdir={workdir}",
          *overrides], os.path.join(workdir, "train.log"))
    _log(f"{method} seed {seed}: trained in {time.time() - t0:.0f}s")
    if not evaluate:
      return None
    _run([py, "-m", "pbrl_jax.cli.eval_main", f"--config={cfg}", f"--workdir={workdir}",
          "--name=final", f"--config.seed={seed}"], os.path.join(workdir, "eval.log"))
  return _eval_result(result)


def run_premise(out: str, data_dir: str, steps: int | None, smoke: bool,
                reused: dict[str, Any] | None = None,
                reused_losses: Sequence[float] | None = None) -> tuple[dict[str, Any], str]:
  """The paper's premise, a policy with an English lead: SFT on the English pivot references
  for the English questions only (`sft_en`, seed 0). Returns its evaluation and the HF
  directory (adapters merged) that every arm starts from.

  With the evaluation of an earlier run (`reused`, `reused_losses` its training losses) the
  model is rebuilt without evaluating it again (an hour of greedy decoding at the study's
  size), and must have trained to the same losses.
  """
  workdir = os.path.join(out, "premise")
  model = os.path.join(workdir, "model")
  done = os.path.exists(os.path.join(model, "config.json"))
  if reused is None:
    result = run_method("sft_en", 0, out, data_dir, steps, smoke, workdir=workdir)
  else:
    if not done:
      run_method("sft_en", 0, out, data_dir, steps, smoke, workdir=workdir, evaluate=False)
    check_same_premise(reused_losses, training_losses(workdir))
    result = reused
  if not done:
    _run([sys.executable, "-m", "pbrl_jax.cli.eval_main",
          f"--config={_config_arg('sft_en', data_dir, smoke)}", f"--workdir={workdir}",
          f"--export_hf={model}"], os.path.join(workdir, "export.log"))
  return result, model


def run_base(out: str, data_dir: str, smoke: bool) -> dict[str, Any]:
  workdir = os.path.join(out, "base")
  os.makedirs(workdir, exist_ok=True)
  result = os.path.join(workdir, "eval", "base.json")
  if not os.path.exists(result):
    # The trained languages are the RL methods' (the SFT config has the same data.langs).
    _run([sys.executable, "-m", "pbrl_jax.cli.eval_main",
          f"--config={_config_arg('pbrl_hybrid', data_dir, smoke)}", f"--workdir={workdir}",
          "--base", "--name=base"], os.path.join(workdir, "eval.log"))
  return _eval_result(result)


# ---------------------------------------------------------------------------------------------
# The page.
# ---------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def _langs(results: dict[str, Any]) -> list[str]:
  langs = set()
  for r in results.values():
    langs |= set(r["per_language"])
  return ["en"] + sorted(langs - {"en"})


def _mean_accuracy(per_language: dict[str, Any], langs: Sequence[str]) -> float | None:
  vals = [per_language[x]["accuracy"] for x in langs if x in per_language]
  return sum(vals) / len(vals) if vals else None


def results_table(results: dict[str, dict[str, Any]]) -> list[str]:
  """Accuracy (%) per language, English, non-English mean, gap, and the means over the
  study's trained and held-out languages (the same for every row: the premise's own run
  trained on English, which its summary's `trained_mean` is about)."""
  langs = _langs(results)
  head = (["run"] + langs + ["non-en mean", "gap (en - non-en)", "trained", "held-out",
                             "lang. consistent"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in results.items():
    s = r["summary"]
    pl = r["per_language"]
    cons = [pl[x]["language_consistent"] for x in pl if x != "en"]
    row = [name] + [_pct(pl[x]["accuracy"]) if x in pl else "-" for x in langs]
    row += [_pct(s.get("non_english_mean")),
            f"{_pct(s.get('gap'))} [{_pct(s.get('gap_ci_low'))}, {_pct(s.get('gap_ci_high'))}]",
            _pct(_mean_accuracy(pl, miniature.TRAIN_LANGS)),
            _pct(_mean_accuracy(pl, miniature.HELD_OUT_LANGS)),
            _pct(sum(cons) / len(cons) if cons else None)]
    lines.append("| " + " | ".join(row) + " |")
  return lines


def consistency_table(results: dict[str, dict[str, Any]]) -> list[str]:
  """Share (%) of answers in the question's language, per language and run."""
  langs = _langs(results)
  lines = ["| run | " + " | ".join(langs) + " |", "|" + "---|" * (len(langs) + 1)]
  for name, r in results.items():
    pl = r["per_language"]
    lines.append("| " + " | ".join([name] + [_pct(pl[x]["language_consistent"]) if x in pl
                                             else "-" for x in langs]) + " |")
  return lines


def in_language_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The records scored in the question's language: right only if right AND written in it."""
  return [{**r, "correct": bool(r["correct"]) and bool(r["language_consistent"])}
          for r in records]


def in_language_accuracy(records: list[dict[str, Any]], lang: str) -> float | None:
  """Share of `lang`'s answers that are right AND written in the question's language."""
  recs = [r for r in in_language_records(records) if r["lang"] == lang]
  return sum(r["correct"] for r in recs) / len(recs) if recs else None


def in_language_table(results: dict[str, dict[str, Any]]) -> list[str]:
  """Accuracy (%) counting only answers written in the question's language."""
  langs = _langs(results)
  lines = ["| run | " + " | ".join(langs) + " |", "|" + "---|" * (len(langs) + 1)]
  for name, r in results.items():
    lines.append("| " + " | ".join([name] + [_pct(in_language_accuracy(r["records"], x))
                                             for x in langs]) + " |")
  return lines


def metrics_rows(workdir: str) -> list[dict[str, Any]]:
  """The logged steps of a training run (its metrics.jsonl; none when it has not trained)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def training_summary(workdir: str) -> dict[str, Any] | None:
  """Steps, wall time and first vs last 20% of the training curves, from metrics.jsonl."""
  rows = metrics_rows(workdir)
  if not rows:
    return None
  k = max(1, round(0.2 * len(rows)))

  def mean(key: str, part: list[dict[str, Any]]) -> float | None:
    vals = [r[key] for r in part if isinstance(r.get(key), (int, float))]
    return sum(vals) / len(vals) if vals else None

  out = {"steps": len(rows), "minutes": sum(r.get("time/step", 0.0) for r in rows) / 60}
  for key in ("reward_mean", "loss", "kl", "rollout/mean_length"):
    out[key] = (mean(key, rows[:k]), mean(key, rows[-k:]))
  return out


def training_table(summaries: dict[str, dict[str, Any] | None]) -> list[str]:
  def pair(v: tuple[float | None, float | None], fmt: str) -> str:
    return " -> ".join("-" if x is None else format(x, fmt) for x in v)
  lines = ["| run | steps | train min | reward (first -> last 20%) | loss | KL | mean length |",
           "|---|---|---|---|---|---|---|"]
  for name, t in summaries.items():
    if t is None:
      continue
    lines.append(f"| {name} | {t['steps']} | {t['minutes']:.1f} | {pair(t['reward_mean'], '.3f')}"
                 f" | {pair(t['loss'], '.3f')} | {pair(t['kl'], '.3f')}"
                 f" | {pair(t['rollout/mean_length'], '.1f')} |")
  return lines


def _records_by_method(results: dict[str, dict[str, Any]]) -> dict[str, list[list[dict]]]:
  """'method (seed s)' results -> {method: [records of each seed]} ('base' stays 'base')."""
  out: dict[str, list[list[dict]]] = {}
  for name, r in results.items():
    out.setdefault(name.split(" (seed ")[0], []).append(r["records"])
  return out


def endpoint_rows(results: dict[str, dict[str, Any]], n_boot: int = 2000
                  ) -> list[dict[str, Any]]:
  """The primary endpoint and the secondary comparisons, each with its two-level interval.

  Trained-language Delta (method - base) for every arm; held-out Delta; trained-language
  Delta counting only answers written in the question's language (what the pivot reward asks
  for); hybrid - RLVR on the trained languages (the dense pivot reward against the sparse
  verifiable one).
  """
  by_method = _records_by_method(results)
  # Every arm's starting policy: the English-SFT premise when the study built one.
  start = "premise" if "premise" in by_method else "base"
  if start not in by_method:
    return []
  ids = sorted({r["id"] for r in by_method[start][0]})
  groups = {"trained": list(miniature.TRAIN_LANGS), "held-out": list(miniature.HELD_OUT_LANGS)}
  tables = {m: {g: endpoints.correctness(recs, ids, langs) for g, langs in groups.items()}
            for m, recs in by_method.items()}
  for m, recs in by_method.items():
    tables[m]["trained, in-language"] = endpoints.correctness(
        [in_language_records(r) for r in recs], ids, groups["trained"])
  rows = []
  for method in by_method:
    if method in ("base", start):
      continue
    for group in tables[method]:
      rows.append({"comparison": f"{method} - {start}", "languages": group,
                   **endpoints.two_level_delta(tables[method][group], tables[start][group],
                                               n_boot=n_boot)})
  if "pbrl_hybrid" in tables and "rlvr_grpo" in tables:
    rows.append({"comparison": "pbrl_hybrid - rlvr_grpo", "languages": "trained",
                 **endpoints.two_level_delta(tables["pbrl_hybrid"]["trained"],
                                             tables["rlvr_grpo"]["trained"], n_boot=n_boot)})
  return rows


def endpoint_table(rows: list[dict[str, Any]]) -> list[str]:
  lines = ["| comparison | languages | Delta (points) | 95% interval | problems | seeds |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['comparison']} | {r['languages']} | {100 * r['delta']:+.1f} | "
                 f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] | {r['n_problems']} |"
                 f" {r['n_seeds_a']} vs {r['n_seeds_b']} |")
  return lines


def verdict(rows: list[dict[str, Any]]) -> str:
  """Plain words on the primary endpoint for PB-RLSVR hybrid (and against RLVR)."""
  get = {(r["comparison"], r["languages"]): r for r in rows}
  main = get.get(("pbrl_hybrid - premise", "trained")) or get.get(("pbrl_hybrid - base",
                                                                     "trained"))
  if main is None:
    return "The hybrid arm has not been run: no verdict."
  vs = get.get(("pbrl_hybrid - rlvr_grpo", "trained"))
  if main["ci_low"] > 0:
    text = (f"**The direction reproduces:** PB-RLSVR (hybrid) raises trained-language accuracy"
            f" by {100 * main['delta']:+.1f} points, interval above zero.")
  elif main["ci_high"] < 0:
    text = (f"**The direction does not reproduce:** PB-RLSVR (hybrid) lowers trained-language"
            f" accuracy by {100 * main['delta']:+.1f} points, interval below zero.")
  else:
    text = (f"**Not detected:** PB-RLSVR (hybrid) changes trained-language accuracy by"
            f" {100 * main['delta']:+.1f} points, and the interval"
            f" [{100 * main['ci_low']:+.1f}, {100 * main['ci_high']:+.1f}] includes zero.")
  if vs is not None:
    text += (f" Against RLVR-GRPO: {100 * vs['delta']:+.1f} points"
             f" [{100 * vs['ci_low']:+.1f}, {100 * vs['ci_high']:+.1f}].")
  return text


def plot(results: dict[str, dict[str, Any]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  langs = _langs(results)
  names = list(results)
  fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(langs) * len(names) / 3), 4.5))
  width = 0.8 / len(names)
  x = np.arange(len(langs))
  for i, name in enumerate(names):
    pl = results[name]["per_language"]
    acc = [100 * pl[l]["accuracy"] if l in pl else 0.0 for l in langs]
    lo = [100 * (pl[l]["accuracy"] - pl[l]["ci_low"]) if l in pl else 0.0 for l in langs]
    hi = [100 * (pl[l]["ci_high"] - pl[l]["accuracy"]) if l in pl else 0.0 for l in langs]
    ax.bar(x + i * width - 0.4 + width / 2, acc, width, yerr=[lo, hi], capsize=2, label=name)
  ax.set_xticks(x, langs)
  ax.set_ylabel("exact-match accuracy (%), 95% bootstrap CI")
  ax.set_title("Miniature study: accuracy per language (held-out test problems)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fileio.atomic_savefig(fig, path)
  plt.close(fig)


def _mt_note(results: dict[str, Any]) -> str:
  if any(name.startswith("pbrl_mt ") for name in results):
    return f" (pbrl_mt: {', '.join(miniature.MT_LANGS)})"
  return ""


def _wall(meta: dict[str, Any]) -> str:
  if meta.get("wall_minutes") is None:
    return "not recorded (page rebuilt from finished stages; training minutes per run below)"
  text = f"{meta['wall_minutes']:.0f} min"
  reused = meta.get("reused")
  if reused:
    earlier = reused.get("wall_minutes")
    text += (f", plus {earlier:.0f} min" if earlier is not None else ", plus the time") + (
        f" of the earlier run whose evaluations were reused ({', '.join(reused['arms'])})")
  return text


def _english_lead(result: dict[str, Any]) -> str:
  s = result["summary"]
  return (f"English {_pct(s['english_accuracy'])}% vs non-English mean"
          f" {_pct(s['non_english_mean'])}%")


def _premise_note(results: dict[str, Any], meta: dict[str, Any]) -> str:
  if meta.get("premise") == "english_sft" and "premise" in results:
    return ("Starting policy (`premise`): the paper starts from a policy that is better in"
            " English, so every arm starts from the base fine-tuned with SFT on the English"
            " references of the training problems, asked in English only (`sft_en`, LoRA"
            f" merged). Base: {_english_lead(results['base'])}; premise:"
            f" {_english_lead(results['premise'])}. Deltas are measured against the premise.")
  if meta.get("premise") == "english_sft":
    return ("Starting policy (`premise`): the base fine-tuned with SFT on the English references"
            " of the training problems, asked in English only (`sft_en`); not built yet"
            f" (pending). Base: {_english_lead(results['base'])}.")
  return "Starting policy: the base model (no premise stage)."


def _status(results: dict[str, Any], meta: dict[str, Any]) -> list[str]:
  """What the page does not hold yet: this run's pending stages, and RL arms with fewer
  seeds than the design's (a run may ask for fewer, so its own plan can be complete)."""
  lines = []
  pending = meta.get("pending") or []
  if pending:
    lines += [f"**Partial study:** done {', '.join(results)}; pending {', '.join(pending)}."
              " The endpoints and the verdict below use the finished arms only.", ""]
  seeds: dict[str, int] = {}
  for name in results:
    if name not in ("base", "premise"):
      method, _ = parse_arm_name(name, "results")
      seeds[method] = seeds.get(method, 0) + 1
  rl_seeds = {m: n for m, n in seeds.items() if m != "sft"}  # SFT runs one seed by design
  if any(n < DESIGN_SEEDS for n in rl_seeds.values()):
    have = ", ".join(f"{m} {n}" for m, n in rl_seeds.items())
    lines += [f"**Seeds:** the design has {DESIGN_SEEDS} seeds per RL arm; this page holds"
              f" {have}. The endpoints average the seeds there are.", ""]
  return lines


def write_page(out: str, results: dict[str, Any], meta: dict[str, Any]) -> str:
  lines = [
      "# The paper's comparison in miniature", "",
      f"Command: `{meta['command']}`", "",
      *_status(results, meta),
      f"Policy SmolLM2-135M-Instruct; data: one-step arithmetic word problems in eight languages"
      f" (pbrl_jax/data/arith.py), {meta['n_train']} training problems, {meta['n_test']} test"
      f" problems per language (greedy, at most {meta['eval_tokens']} new tokens; RL rollouts"
      f" at most {meta.get('rollout_tokens', '?')}). Trained languages"
      f" {', '.join(miniature.TRAIN_LANGS)}{_mt_note(results)}; held"
      f" out {', '.join(miniature.HELD_OUT_LANGS)}. Steps per method: {meta['steps']}; seeds:"
      f" {meta['seeds']}. Wall time: {_wall(meta)} on {meta['machine']}.", "",
      _premise_note(results, meta), "",
      "## Primary endpoint", "",
      "Delta = method minus its starting policy's accuracy, averaged over the trained"
      " languages (secondary: the held-out ones, and the trained ones counting only answers"
      " written in the question's language), seeds averaged; 95% interval from a two-level"
      " bootstrap (problems, shared by every language and arm, then seeds;"
      " experiments/miniature/endpoints.py).", "",
      *endpoint_table(meta.get("endpoints", [])), "",
      verdict(meta.get("endpoints", [])), "",
      "## Accuracy per language", "",
      "Accuracy in % (exact match of the final number); gap = English minus the non-English"
      " mean, with its 95% bootstrap interval.", "",
      *results_table(results), "",
      "![accuracy per language](accuracy.png)", "",
      "Language consistency in % (answers written in the question's language):", "",
      *consistency_table(results), "",
      "Accuracy in % counting only answers written in the question's language (a right"
      " number in English counts as wrong here):", "",
      *in_language_table(results), "",
      "Training (first vs last 20% of steps; the SFT loss is the references' NLL, its reward"
      " is not defined):", "",
      *training_table(meta.get("training", {})), "",
  ]
  path = os.path.join(out, "results.md")
  fileio.atomic_write(path, "\n".join(lines) + "\n")
  return path


def arm_name(method: str, seed: int) -> str:
  return f"{method} (seed {seed})"


_ARM_NAME = re.compile(r"(\w+) \(seed (\d+)\)")
_ARM_DIR = re.compile(r"(\w+)-s(\d+)")


def parse_arm_name(name: str, source: str) -> tuple[str, int]:
  """(method, seed) of an arm's name (`arm_name`); `source` names the file for the error."""
  m = _ARM_NAME.fullmatch(name)
  if not m or m.group(1) not in miniature.METHODS:
    raise SystemExit(f"{source}: result {name!r} is not an arm of this study (expected"
                     f" 'METHOD (seed N)' with METHOD one of {list(miniature.METHODS)})")
  return m.group(1), int(m.group(2))


def finished_arms(out: str, reused: dict[str, Any], reuse_path: str) -> list[tuple[str, int]]:
  """The arms finished before this run: those of the reused results.json and those evaluated
  in OUT (`METHOD-sSEED/eval/final.json`), in study order. The page keeps them whatever
  --methods and --seeds say, so a run that adds one arm never drops another from
  results.json or from the copy committed in experiments/miniature/."""
  arms = {parse_arm_name(name, f"--reuse {reuse_path}") for name in reused
          if name not in ("base", "premise")}
  for entry in sorted(os.listdir(out)) if os.path.isdir(out) else ():
    m = _ARM_DIR.fullmatch(entry)
    if (m and m.group(1) in miniature.METHODS
        and os.path.exists(final_eval(os.path.join(out, entry)))):
      arms.add((m.group(1), int(m.group(2))))
  return sorted(arms, key=lambda a: (miniature.METHODS.index(a[0]), a[1]))


def design(n_test: int, premise: str) -> dict[str, Any]:
  """What arms must share to be compared: test problems per language, premise, and the
  completion budgets (a shorter cap cuts off in-language answers first, configs/common.py)."""
  return {"n_test": n_test, "premise": premise,
          "rollout_tokens": miniature.get_config("rlvr_grpo").rollout.max_new_tokens,
          "eval_tokens": miniature.get_config().eval.max_new_tokens}


def load_reused(path: str, want: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(results, meta) of an earlier run's results.json, or empty dicts without a path.

  Refuses a file from a different design (`design`): its arms would not be comparable with
  the ones this run adds.
  """
  if not path:
    return {}, {}
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  meta = saved.get("meta", {})
  for key, value in want.items():
    if meta.get(key) != value:
      raise SystemExit(f"--reuse {path}: meta.{key} is {meta.get(key)!r}, this run uses"
                       f" {value!r}; its arms are not comparable")
  _log(f"reusing {', '.join(saved['results'])} from {path}")
  return saved["results"], meta


# Relative difference allowed between a rebuilt premise's training losses and the saved
# ones: the same code and seed give the same losses up to float reassociation on another CPU
# (~1e-6); another seed, data order or learning rate moves them by percents after step 1.
PREMISE_LOSS_RTOL = 1e-3


def training_losses(workdir: str) -> list[float]:
  """The training loss of every logged step (metrics.jsonl), the premise's fingerprint."""
  return [float(r["loss"]) for r in metrics_rows(workdir) if "loss" in r]


def check_same_premise(reused: Sequence[float] | None, fresh: Sequence[float]) -> None:
  """A rebuilt premise must be the reused one (same seed, same code): otherwise the arms of
  the two runs start from different policies, and the page must not mix them."""
  if not reused:
    raise SystemExit("--reuse: the saved results.json has no premise_losses (written before"
                     " they were recorded), so a rebuilt premise cannot be checked against the"
                     " evaluated one; rerun the premise without --reuse")
  bad = [i for i, (a, b) in enumerate(zip(reused, fresh))
         if abs(a - b) > PREMISE_LOSS_RTOL * abs(a)]
  if len(reused) != len(fresh) or bad:
    at = bad[0] if bad else min(len(reused), len(fresh))
    raise SystemExit(
        f"the rebuilt premise differs from the reused one ({len(fresh)} vs {len(reused)}"
        f" logged steps; first difference at step {at + 1}:"
        f" {fresh[at] if at < len(fresh) else None} vs {reused[at] if at < len(reused) else None}):"
        " the arms would start from different policies; rerun every arm instead of --reuse")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--methods", default=",".join(miniature.STUDY_METHODS),
                  help=f"any of {','.join(miniature.METHODS)}")
  ap.add_argument("--seeds", default=",".join(map(str, range(DESIGN_SEEDS))),
                  help="seeds of the RL arms; SFT runs the first")
  ap.add_argument("--steps", type=int, default=0, help="0: the config's total_steps")
  ap.add_argument("--n_train", type=int, default=64)
  ap.add_argument("--n_test", type=int, default=miniature.N_TEST)
  ap.add_argument("--premise", choices=("english_sft", "none"), default="english_sft",
                  help="english_sft: every arm starts from the base fine-tuned on the English"
                  " references in English (the paper's premise of an English lead); none: from"
                  " the base")
  ap.add_argument("--reuse", default="",
                  help="results.json of an earlier run (experiments/miniature/results.json):"
                  " its evaluations count as done, so a study continues on a machine that"
                  " does not hold the earlier run directories")
  ap.add_argument("--smoke", action="store_true", help="tiny random policy, 1 step (tests)")
  args = ap.parse_args(argv)
  args.method_list = [m for m in args.methods.split(",") if m]
  unknown = sorted(set(args.method_list) - set(miniature.METHODS))
  if unknown:
    ap.error(f"--methods: unknown {unknown}; choose from {list(miniature.METHODS)}")
  args.seed_list = [int(s) for s in args.seeds.split(",") if s]
  args.argv = list(argv if argv is not None else sys.argv[1:])
  return args


def build_meta(args: argparse.Namespace, out: str, results: dict[str, Any], plan: list[str],
               runs: list[tuple[str, int]], reused: dict[str, Any],
               reused_meta: dict[str, Any], t0: float) -> dict[str, Any]:
  """The page's facts: design, command, wall time, training summaries, endpoints, and the
  stages of this run's plan still pending (a partial page is published after every stage)."""
  reused_training = reused_meta.get("training", {})
  training = {arm_name(m, sd): (reused_training.get(arm_name(m, sd))
                                if arm_name(m, sd) in reused else
                                training_summary(arm_dir(out, m, sd)))
              for m, sd in runs if arm_name(m, sd) in results}
  meta: dict[str, Any] = {
      "command": shlex.join(["python", "experiments/miniature/run.py", *args.argv]),
      "n_train": args.n_train, "seeds": sorted({sd for _, sd in runs}) or args.seed_list,
      **design(args.n_test, args.premise),
      # --methods "" runs the base and the premise only (the first sitting of a study).
      "steps": args.steps or miniature.get_config(
          args.method_list[0] if args.method_list else "sft_en").total_steps,
      "wall_minutes": (time.time() - t0) / 60,
      "machine": os.environ.get("PBRL_MACHINE", f"{os.cpu_count()} CPU cores"),
      "pending": [name for name in plan if name not in results]}
  if args.premise == "english_sft":
    here = os.path.join(out, "premise")
    training = {"premise (sft_en)": (training_summary(here)
                                     or reused_training.get("premise (sft_en)")), **training}
    meta["premise_losses"] = (reused_meta.get("premise_losses") if "premise" in reused
                              else training_losses(here)) or None
  meta["training"] = training
  meta["endpoints"] = endpoint_rows(results, n_boot=200 if args.smoke else 2000)
  if reused:
    meta["reused"] = {"from": args.reuse, "arms": sorted(set(reused) & set(results)),
                      "wall_minutes": reused_meta.get("wall_minutes")}
  if not _STAGE_SECONDS:
    # Every stage was done before: the page keeps the wall time of the run that did them,
    # or says it was not recorded (the page is rebuilt from finished stages).
    meta["wall_minutes"] = None
    previous = os.path.join(out, "results.json")
    if os.path.exists(previous):
      with open(previous, encoding="utf-8") as f:
        meta["wall_minutes"] = json.load(f)["meta"]["wall_minutes"]
  return meta


def publish(out: str, results: dict[str, Any], meta: dict[str, Any], smoke: bool) -> None:
  """results.json, the page and its plot; without --smoke also copied into the repository, so
  every finished stage of a study that takes several sittings can be committed."""
  fileio.atomic_write_json(os.path.join(out, "results.json"), {"meta": meta, "results": results})
  plot(results, os.path.join(out, "accuracy.png"))
  page = write_page(out, results, meta)
  _log(f"wrote {page}" + (f" (pending: {', '.join(meta['pending'])})" if meta["pending"]
                          else ""))
  if not smoke:
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("results.json", "results.md", "accuracy.png"):
      shutil.copy(os.path.join(out, name), os.path.join(here, name))


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse(argv)
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  t0 = time.time()

  from pbrl_jax.data import arith  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(out, "data")
  langs = ("en", *miniature.TRAIN_LANGS, *miniature.HELD_OUT_LANGS)
  arith.write_split(data_dir, langs=langs, n_train=args.n_train, n_test=args.n_test, seed=0)

  reused, reused_meta = load_reused(args.reuse, design(args.n_test, args.premise))
  planned = [(m, sd) for m in args.method_list
             for sd in (args.seed_list[:1] if m == "sft" else args.seed_list)]
  # Earlier arms first (nothing to run), then this run's in the order asked for.
  runs = [a for a in finished_arms(out, reused, args.reuse) if a not in planned] + planned
  to_train = [(m, sd) for m, sd in runs if arm_name(m, sd) not in reused
              and not os.path.exists(final_eval(arm_dir(out, m, sd)))]
  with_premise = args.premise == "english_sft"
  plan = ["base", *(["premise"] if with_premise else []), *(arm_name(m, sd) for m, sd in runs)]
  results: dict[str, Any] = {}

  def stage_done(name: str, result: dict[str, Any]) -> None:
    results[name] = result
    publish(out, results, build_meta(args, out, results, plan, runs, reused, reused_meta, t0),
            args.smoke)

  stage_done("base", reused.get("base") or run_base(out, data_dir, args.smoke))
  init = None
  if with_premise:
    if to_train or "premise" not in reused:  # the arms to train start from its model
      premise, init = run_premise(out, data_dir, args.steps or None, args.smoke,
                                  reused.get("premise"), reused_meta.get("premise_losses"))
    else:
      premise = reused["premise"]
    stage_done("premise", premise)
  for method, seed in runs:
    name = arm_name(method, seed)
    stage_done(name, reused.get(name) or run_method(method, seed, out, data_dir,
                                                    args.steps or None, args.smoke, init))
  return 0


if __name__ == "__main__":
  sys.exit(main())
