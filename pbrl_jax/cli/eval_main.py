"""pbrl-eval: per-language accuracy, the English vs non-English gap, a report with plots.

  pbrl-eval --config configs/X.py --workdir DIR            # newest checkpoint, else the base
  pbrl-eval --config configs/X.py --workdir DIR --base     # the config's base model
  pbrl-eval --config configs/X.py --workdir DIR --checkpoint_step=200
  pbrl-eval --config configs/X.py --workdir DIR --params_from=HF_DIR
  pbrl-eval --config configs/X.py --workdir DIR --model=PATH   # any HF dir or .gguf
  pbrl-eval --workdir DIR --compare=DIR/eval/base.json,DIR/eval/step_200.json

Reads the config's `model.path` (HF dir, .gguf or 'embedded:smollm2'), its `eval` section
(configs/eval_defaults.py) and the trained languages `data.langs` (when the config has them;
`--trained_langs` overrides). A checkpoint is the trainer's Orbax checkpoint in
DIR/checkpoints: only the policy parameters (`state.params['policy']`) are restored, straight
into the base model's shapes and dtypes; optimizer state and everything else stay on disk.
With several devices the model (base, checkpoint or HF directory) is read straight into the
trainer's shardings over `config.mesh`, so a model too big for one device can be evaluated.

Writes DIR/eval/<name>.json (atomically) holding every dataset's `pbrl_jax.evaluate.evaluate`
result, and DIR/eval/<name>.md with PNG plots (per-language accuracy with 95% CI error bars,
English vs non-English mean and gap). `--compare=a.json,b.json` evaluates nothing: it writes
a before/after report of two result files.
DIR is a local path or a gs://BUCKET/path URL (`pbrl_jax.fileio`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from pbrl_jax import fileio


def define_flags() -> None:
  """Defines this command's flags when it runs, so that importing the module defines none."""
  global _CONFIG, _WORKDIR, _NAME, _BASE, _MODEL, _CHECKPOINT_STEP, _PARAMS_FROM
  global _TRAINED_LANGS, _COMPARE, _DTYPE, _EXPORT_HF
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; results go to DIR/eval/.")
  fileio.output_flag("workdir")
  _NAME = flags.DEFINE_string("name", "", "Result name (default: step_<N>, base, the model's "
                              "file name, or 'compare').")
  _BASE = flags.DEFINE_bool("base", False, "Evaluate the config's base model even when "
                            "checkpoints exist.")
  _MODEL = flags.DEFINE_string("model", "", "Evaluate this HF directory or .gguf instead.")
  _CHECKPOINT_STEP = flags.DEFINE_integer("checkpoint_step", -1, "Checkpoint step to evaluate "
                                          "(-1: the newest).")
  _PARAMS_FROM = flags.DEFINE_string("params_from", "", "HF directory whose weights replace the "
                                     "base model's (same architecture).")
  _TRAINED_LANGS = flags.DEFINE_list("trained_langs", None, "Trained languages (default: the "
                                     "config's data.langs).")
  _COMPARE = flags.DEFINE_list("compare", None, "Two result JSONs (before,after): write a "
                               "comparison report only.")
  _DTYPE = flags.DEFINE_string("dtype", "float32", "Compute and parameter dtype of the model.")
  _EXPORT_HF = flags.DEFINE_string("export_hf", "", "Write the chosen model (a LoRA run's "
                                   "adapters merged) as an HF directory here instead of "
                                   "evaluating it.")
  fileio.refuse_remote("export_hf")  # written by safetensors' and transformers' local calls
  flags.mark_flags_as_required(["workdir"])


# ---------------------------------------------------------------------------------------------
# Models and checkpoints.
# ---------------------------------------------------------------------------------------------


def resolve_model_path(path: str) -> str:
  """`model.path` -> a file system path ('embedded:smollm2' is the packaged GGUF)."""
  from pbrl_jax.models import bundle  # pylint: disable=g-import-not-at-top
  path = bundle.resolve_path(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"model path {path!r}: no such HF directory or GGUF file")
  return path


def eval_mesh(config: Any) -> Any:
  """The run's mesh (`config.mesh`, as the trainer builds it) when there are several devices.

  With one, None: the model sits on the default device, as before meshes were read here.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if config is None or "mesh" not in config or jax.device_count() == 1:
    return None
  from pbrl_jax.models import sharding as shd  # pylint: disable=g-import-not-at-top
  return shd.mesh_from_config(config.mesh)


def load_model(config: Any, workdir: str, dtype: str, mesh: Any = None
               ) -> tuple[Any, str, int | None]:
  """The model the flags ask for: (bundle, default result name, checkpoint step or None).

  With `mesh`, every weight (base, checkpoint or HF directory) is read straight into its
  sharding over the mesh (the trainer's layout), so no device holds the whole model.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models import from_pretrained  # pylint: disable=g-import-not-at-top
  if _MODEL.value:
    bundle = from_pretrained(resolve_model_path(_MODEL.value), dtype=dtype, mesh=mesh)
    name = os.path.splitext(os.path.basename(os.path.normpath(_MODEL.value)))[0]
    return bundle, name, None
  if config is None:
    raise app.UsageError("--config is required unless --model or --compare is given")
  if config.model.get("random_init", False):
    # A test config's random policy: the same initial weights the trainer started from.
    # pylint: disable-next=g-import-not-at-top
    from pbrl_jax.models.bundle import ModelBundle, load_policy
    bundle = ModelBundle(*load_policy(config.model, config.seed, mesh))
  else:
    bundle = from_pretrained(resolve_model_path(config.model.path), dtype=dtype, mesh=mesh)
  if _PARAMS_FROM.value:
    other = from_pretrained(_PARAMS_FROM.value, dtype=dtype, mesh=mesh)
    want = jax.tree.map(lambda x: (x.shape, x.dtype), bundle.params)
    got = jax.tree.map(lambda x: (x.shape, x.dtype), other.params)
    if want != got:
      raise ValueError(f"--params_from={_PARAMS_FROM.value}: parameter shapes differ from the "
                       f"base model {config.model.path}")
    bundle.params = other.params
    return bundle, os.path.basename(os.path.normpath(_PARAMS_FROM.value)), None
  from pbrl_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  steps = ckpt_lib.checkpoint_steps(workdir)
  if _BASE.value or (not steps and _CHECKPOINT_STEP.value < 0):
    if not _BASE.value:
      logging.info("no checkpoint in %s/checkpoints: evaluating the base model", workdir)
    return bundle, "base", None
  step = steps[-1] if _CHECKPOINT_STEP.value < 0 else _CHECKPOINT_STEP.value
  if step not in steps:
    raise ValueError(f"--checkpoint_step={step}: not among the checkpoints {steps} in "
                     f"{workdir}/checkpoints")
  ckpt_lib.restore_policy(bundle, workdir, step, config.model, mesh)
  return bundle, f"step_{step}", step


def trained_languages(config: Any) -> list[str]:
  """--trained_langs, else the config's `data.langs`, else none."""
  if _TRAINED_LANGS.value is not None:
    return [x for x in _TRAINED_LANGS.value if x]
  if config is not None and "data" in config and "langs" in config.data:
    return list(config.data.langs)
  return []


# ---------------------------------------------------------------------------------------------
# Report: markdown tables and PNG plots.
# ---------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 3) -> str:
  return "" if x is None else f"{x:.{digits}f}"


def _save(fig: Any, path: str) -> None:
  from pbrl_jax.fileio import atomic_savefig  # pylint: disable=g-import-not-at-top
  atomic_savefig(fig, path)


def plot_accuracy(path: str, runs: Sequence[tuple[str, dict[str, Any]]], dataset: str) -> bool:
  """Per-language accuracy bars with 95% CI error bars, one bar per run; False if no data."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  tables = [(label, res["datasets"][dataset]["per_language"]) for label, res in runs
            if dataset in res.get("datasets", {})]
  langs = sorted({lang for _, t in tables for lang in t})
  if not langs:
    return False
  fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(langs) * len(tables) + 2), 4))
  width = 0.8 / len(tables)
  x = np.arange(len(langs))
  for i, (label, table) in enumerate(tables):
    acc = np.array([table.get(l, {}).get("accuracy", np.nan) for l in langs], float)
    lo = np.array([table.get(l, {}).get("ci_low") for l in langs], float)
    hi = np.array([table.get(l, {}).get("ci_high") for l in langs], float)
    err = np.nan_to_num(np.stack([acc - lo, hi - acc]), nan=0.0)
    ax.bar(x + (i - (len(tables) - 1) / 2) * width, np.nan_to_num(acc), width, yerr=err,
           capsize=3, label=label)
  ax.set_xticks(x, [f"{l}*" if any(t.get(l, {}).get("trained") for _, t in tables) else l
                    for l in langs])
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy")
  ax.set_title(f"{dataset}: accuracy per language (95% bootstrap CI; * trained)")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return True


def plot_gap(path: str, runs: Sequence[tuple[str, dict[str, Any]]], dataset: str) -> bool:
  """English accuracy vs the non-English mean (and the gap) per run; False if undefined."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = [(label, res["datasets"][dataset]["summary"]) for label, res in runs
          if dataset in res.get("datasets", {})]
  rows = [(label, s) for label, s in rows if s.get("gap") is not None]
  if not rows:
    return False
  fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 2), 4))
  x = np.arange(len(rows))
  ax.bar(x - 0.2, [s["english_accuracy"] for _, s in rows], 0.4, label="English")
  ax.bar(x + 0.2, [s["non_english_mean"] for _, s in rows], 0.4, label="non-English mean")
  for i, (_, s) in enumerate(rows):
    top = max(s["english_accuracy"], s["non_english_mean"])
    label = f"gap {s['gap']:+.3f}"
    if s.get("gap_ci_low") is not None:
      label += f"\n[{s['gap_ci_low']:+.2f}, {s['gap_ci_high']:+.2f}]"
    ax.text(i, min(top + 0.03, 0.9), label, ha="center", fontsize=9)
  ax.set_xticks(x, [label for label, _ in rows])
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy")
  ax.set_title(f"{dataset}: English vs non-English")
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
  return True


def _paired_deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
  """Per language: accuracy change on the shared question ids, with a paired bootstrap CI."""
  from pbrl_jax import evaluate as ev  # pylint: disable=g-import-not-at-top
  from pbrl_jax import stats  # pylint: disable=g-import-not-at-top

  def scores(res):
    out: dict[str, dict[str, float]] = {}
    for r in res.get("records", []):
      out.setdefault(r["lang"], {})[r["id"]] = ev.record_score(r)
    return out

  a, b = scores(before), scores(after)
  n_boot = after.get("settings", {}).get("n_boot", stats.N_BOOT)
  seed = after.get("settings", {}).get("seed", 0)
  return {lang: stats.paired_difference_ci(a[lang], b[lang], n_boot, seed)
          for lang in set(a) & set(b)}


def write_report(out_dir: str, name: str, runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
  """Writes out_dir/<name>.md and its PNGs for one result (or a before/after pair).

  Args:
    out_dir: the eval directory.
    name: file stem of the report and its plots.
    runs: (label, result JSON) pairs; two make a before/after comparison.

  Returns:
    The markdown path.
  """
  fileio.makedirs(out_dir)
  datasets = []
  for _, res in runs:
    datasets += [d for d in res.get("datasets", {}) if d not in datasets]
  title = " vs ".join(label for label, _ in runs)
  lines = [f"# Evaluation: {title}", ""]
  for label, res in runs:
    lines.append(f"- **{label}**: model `{res.get('model', {}).get('source', '?')}`, "
                 f"created {res.get('created', '?')}")
  lines.append("")
  for ds in datasets:
    present = [(label, res["datasets"][ds]) for label, res in runs if ds in res["datasets"]]
    lines += [f"## {ds}", ""]
    lines.append("| run | n | English | non-English mean | gap | gap 95% CI | trained mean |"
                 " held-out mean |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for label, r in present:
      s = r["summary"]
      gap_ci = (f"[{_fmt(s.get('gap_ci_low'))}, {_fmt(s.get('gap_ci_high'))}]"
                if s.get("gap_ci_low") is not None else "")
      lines.append(f"| {label} | {s['n']} | {_fmt(s['english_accuracy'])} | "
                   f"{_fmt(s['non_english_mean'])} | {_fmt(s['gap'])} | {gap_ci} | "
                   f"{_fmt(s['trained_mean'])} | {_fmt(s['held_out_mean'])} |")
    lines.append("")
    langs = sorted({lang for _, r in present for lang in r["per_language"]})
    head = "| lang | trained |"
    sep = "|---|---|"
    for label, _ in present:
      head += f" n | acc {label} | 95% CI | lang-consistent | capped | repetition | length |"
      sep += "---|---|---|---|---|---|---|"
    deltas = {}
    if len(present) == 2:
      head += " Δ acc (paired 95% CI) |"
      sep += "---|"
      deltas = _paired_deltas(*(r for _, r in present))
    lines += [head, sep]
    for lang in langs:
      entries = [r["per_language"].get(lang) for _, r in present]
      trained = any(e and e.get("trained") for e in entries)
      row = f"| {lang} | {'yes' if trained else ''} |"
      for e in entries:
        if e is None:
          row += " | | | | | | |"
          continue
        row += (f" {e['n']} | {_fmt(e['accuracy'])} | [{_fmt(e['ci_low'])}, "
                f"{_fmt(e['ci_high'])}] | {_fmt(e['language_consistent'], 2)} | "
                f"{_fmt(e['length_capped'], 2)} | {_fmt(e['repetition'], 2)} | "
                f"{_fmt(e['mean_length'], 1)} |")
      if len(present) == 2:
        d = deltas.get(lang)
        row += (f" {d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (n={d['n']}) |"
                if d and d["n"] else " |")
      lines.append(row)
    lines.append("")
    acc_png, gap_png = f"{name}_{ds}_accuracy.png", f"{name}_{ds}_gap.png"
    if plot_accuracy(os.path.join(out_dir, acc_png), runs, ds):
      lines += [f"![{ds} accuracy per language]({acc_png})", ""]
    if plot_gap(os.path.join(out_dir, gap_png), runs, ds):
      lines += [f"![{ds} English vs non-English]({gap_png})", ""]
  lines += ["Accuracy: exact match of the extracted final answer (pass@1 when several samples "
            "were drawn). CIs: percentile bootstrap over questions with a fixed seed (the gap's "
            "resamples question ids, paired across languages). Means over languages are macro "
            "averages; English is never in the non-English or held-out means.", ""]
  path = os.path.join(out_dir, f"{name}.md")
  from pbrl_jax.fileio import atomic_write  # pylint: disable=g-import-not-at-top
  atomic_write(path, "\n".join(lines))
  return path


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------


def _load_result(path: str) -> dict[str, Any]:
  try:
    res = json.loads(fileio.read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not a JSON result file ({e.msg})") from e
  if not isinstance(res, dict) or not isinstance(res.get("datasets"), dict):
    raise ValueError(f"{path}: not a pbrl-eval result (no 'datasets' object)")
  return res


def compare(workdir: str, paths: Sequence[str], name: str) -> str:
  """Writes the before/after report of two result files; returns the markdown path."""
  if len(paths) != 2:
    raise app.UsageError(f"--compare takes exactly two JSON files, got {len(paths)}")
  runs = [(os.path.splitext(os.path.basename(p))[0], _load_result(p)) for p in paths]
  if runs[0][0] == runs[1][0]:
    runs = [("before", runs[0][1]), ("after", runs[1][1])]
  return write_report(os.path.join(workdir, "eval"), name or "compare", runs)


def run_export(config: Any, workdir: str, out_dir: str) -> str:
  """Writes the model the flags select (LoRA adapters merged) as an HF directory."""
  from pbrl_jax.models import export_hf  # pylint: disable=g-import-not-at-top
  bundle, _, _ = load_model(config, workdir, _DTYPE.value)  # gathered to the host anyway
  return export_hf(bundle, out_dir, dtype=_DTYPE.value)


def run_eval(config: Any, workdir: str) -> str:
  """Evaluates the model the flags select on every configured dataset; returns the JSON path.

  With several devices the model is sharded over the config's mesh (`eval_mesh`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from pbrl_jax import evaluate as ev  # pylint: disable=g-import-not-at-top
  from pbrl_jax.models import sharding as shd  # pylint: disable=g-import-not-at-top
  if config is None:
    raise app.UsageError("--config is required to evaluate (it names the datasets)")
  spec = ev.EvalSpec.from_config(config.eval)
  mesh = eval_mesh(config)
  with contextlib.ExitStack() as scope:
    if mesh is not None:  # trace under the mesh and the rules, as the trainer does
      scope.enter_context(jax.set_mesh(mesh))
      scope.enter_context(shd.axis_rules())
    return _evaluate(config, workdir, spec, mesh)


def _evaluate(config: Any, workdir: str, spec: Any, mesh: Any) -> str:
  """`run_eval` inside its mesh scope: load, evaluate, write the JSON and the report."""
  from pbrl_jax import evaluate as ev  # pylint: disable=g-import-not-at-top
  from pbrl_jax.fileio import atomic_write_json  # pylint: disable=g-import-not-at-top
  bundle, default_name, step = load_model(config, workdir, _DTYPE.value, mesh)
  if bundle.tokenizer is None:
    raise ValueError("the model has no tokenizer files; pbrl-eval needs one")
  name = _NAME.value or default_name
  trained = trained_languages(config)
  result: dict[str, Any] = {
      "name": name,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "model": {"source": _MODEL.value or _PARAMS_FROM.value or config.model.path,
                "checkpoint_step": step, "workdir": fileio.absolute(workdir)},
      "trained_langs": trained,
  }
  result["datasets"] = ev.run_datasets(bundle.params, bundle.config, bundle.tokenizer, spec,
                                       workdir=workdir, trained_langs=trained, mesh=mesh)
  out_dir = os.path.join(workdir, "eval")
  fileio.makedirs(out_dir)
  path = os.path.join(out_dir, f"{name}.json")
  atomic_write_json(path, result)
  write_report(out_dir, name, [(name, result)])
  return path


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fileio.require_output_dir(_WORKDIR.value, "pbrl-eval")
  if _COMPARE.value:
    path = compare(_WORKDIR.value, _COMPARE.value, _NAME.value)
  elif _EXPORT_HF.value:
    path = run_export(_CONFIG.value, _WORKDIR.value, _EXPORT_HF.value)
  else:
    path = run_eval(_CONFIG.value, _WORKDIR.value)
  logging.info("wrote %s", path)
  print(path)


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
