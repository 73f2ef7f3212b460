"""pbrl-compare, reports: speed summary, markdown, PNG curves."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from pbrl_jax.fileio import atomic_savefig




# ---------------------------------------------------------------------------------------------
# Reports: JSON, markdown, PNG.
# ---------------------------------------------------------------------------------------------


def _steady(records: Sequence[Mapping[str, float]], key: str) -> float:
  """Median over steps after the first (compilation / warm-up), or the only step."""
  vals = [r[key] for r in records[1:]] or [r[key] for r in records]
  return float(np.median(vals)) if vals else math.nan


def speed_summary(records: Sequence[Mapping[str, float]], phases: Sequence[str]
                  ) -> dict[str, float]:
  """Steady-state seconds per step, completion tokens per step and per second, phases."""
  sec = _steady(records, "time_step")
  tok = _steady(records, "completion_tokens")
  out = {"seconds_per_step": sec, "completion_tokens_per_step": tok,
         "completion_tokens_per_second": tok / sec if sec > 0 else math.nan,
         "first_step_seconds": records[0]["time_step"] if records else math.nan}
  for ph in phases:
    out[f"seconds_{ph}"] = _steady(records, f"time_{ph}")
    out[f"share_{ph}"] = out[f"seconds_{ph}"] / sec if sec > 0 else math.nan
  return out


TRL_PHASES = ("generation", "reward", "reference_forward", "policy_forward",
              "backward_optimizer")
JAX_PHASES = ("generation", "reward", "reference_forward", "update")




def _fmt(x: Any, spec: str = ".4g") -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_report(result: Mapping[str, Any]) -> str:
  """Preset, parity, curves and speed as markdown."""
  lines = [f"# GRPO: TRL {result['versions']['trl']} vs pbrl_jax", "",
           f"model: `{result['model']}`; prompts: {result['num_prompts']} x "
           f"{result['preset']['num_generations']} completions; seed {result['preset']['seed']};"
           f" reward: `{result['reward']}`; TRL dtype: {result['trl_dtype']}", "",
           "## Matched preset", "", result["preset_table"], ""]
  par = result.get("parity")
  if par:
    e = lambda x: _fmt(x, ".1e")
    lines += ["## Step-level parity (same completions, fp32)", "",
              f"advantages from: {par['advantages_source']}; rows {par['rows']}, completion "
              f"tokens {par['completion_tokens']}; tolerance {par['rtol']:g} relative. Errors"
              " are max|ours - TRL| / max|TRL|, except the loss's: |ours - TRL| /"
              " max(|loss TRL|, mean|A|), because the loss of group-centred advantages nearly"
              " cancels and its rounding is that of its terms (about |A| each): an absolute"
              " floor of rtol x mean|A|. 'vs fp64' columns: distance of ours / TRL"
              " (both fp32) to TRL run in float64.", "",
              "| probe | loss TRL | loss ours | loss | log-probs | ref log-probs | gradient |"
              " grad norm | gradient vs fp64 (ours / TRL) | grad norm vs fp64 (ours / TRL) |"
              " KL k3 mean | ratio outside clip |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, pr in par["probes"].items():
      lines.append(
          f"| {name} | {_fmt(pr['loss_trl'], '.6g')} | {_fmt(pr['loss_ours'], '.6g')}"
          f" | {e(pr['loss_rel_err'])} | {e(pr['logp_rel_err'])} |"
          f" {e(pr.get('ref_logp_rel_err'))} | {e(pr['grad_rel_err'])} |"
          f" {e(pr['grad_norm_rel_err'])} |"
          f" {e(pr['grad_rel_err_ours_vs_fp64'])} / {e(pr['grad_rel_err_trl_vs_fp64'])} |"
          f" {e(pr['grad_norm_rel_err_ours_vs_fp64'])} /"
          f" {e(pr['grad_norm_rel_err_trl_vs_fp64'])} |"
          f" {_fmt(pr['kl_k3_mean'], '.2e')} | {_fmt(pr['ratio_outside_clip_frac'], '.2f')} |")
    for name, pr in par["probes"].items():
      worst = ", ".join(f"`{w['name']}` {e(w['ours_vs_fp64'])} / {e(w['trl_vs_fp64'])}"
                        for w in pr["grad_worst_tensors"][:3])
      lines.append(f"\n{name}: largest per-tensor gradient errors vs fp64 (ours / TRL): {worst}")
    failed = sorted(k for k, c in par["checks"].items() if not c["passed"])
    lines += ["", f"max relative error to TRL {par['max_rel_err']:.2e}: "
              f"{'PASS' if par['passed'] else 'FAIL: ' + ', '.join(failed)}", ""]
  trl_c, jax_c = result.get("trl_steps", []), result.get("jax_steps", [])
  if trl_c or jax_c:
    lines += ["## Training curves", "",
              "| step | reward TRL | reward ours | KL TRL | KL ours | loss TRL | loss ours |"
              " s/step TRL | s/step ours |", "|---|---|---|---|---|---|---|---|---|"]
    for i in range(max(len(trl_c), len(jax_c))):
      t = trl_c[i] if i < len(trl_c) else {}
      j = jax_c[i] if i < len(jax_c) else {}
      lines.append(f"| {i + 1} | {_fmt(t.get('reward_mean'))} | {_fmt(j.get('reward_mean'))} |"
                   f" {_fmt(t.get('kl'))} | {_fmt(j.get('kl'))} | {_fmt(t.get('loss'))} |"
                   f" {_fmt(j.get('loss'))} | {_fmt(t.get('time_step'), '.2f')} |"
                   f" {_fmt(j.get('time_step'), '.2f')} |")
    lines.append("")
  speed = result.get("speed")
  if speed:
    t, j = speed["trl"], speed["jax"]
    lines += ["## Speed (steady state: median of steps after the first)", "",
              "| | TRL | pbrl_jax |", "|---|---|---|",
              f"| seconds / step | {_fmt(t['seconds_per_step'], '.3f')} |"
              f" {_fmt(j['seconds_per_step'], '.3f')} |",
              f"| completion tokens / step | {_fmt(t['completion_tokens_per_step'], '.0f')} |"
              f" {_fmt(j['completion_tokens_per_step'], '.0f')} |",
              f"| completion tokens / s | {_fmt(t['completion_tokens_per_second'], '.1f')} |"
              f" {_fmt(j['completion_tokens_per_second'], '.1f')} |",
              f"| first step seconds | {_fmt(t['first_step_seconds'], '.2f')} |"
              f" {_fmt(j['first_step_seconds'], '.2f')} |"]
    for ph in ("generation", "reward", "reference_forward"):
      lines.append(f"| {ph} | {_fmt(t[f'seconds_{ph}'], '.3f')} s"
                   f" ({_fmt(100 * t[f'share_{ph}'], '.0f')}%) |"
                   f" {_fmt(j[f'seconds_{ph}'], '.3f')} s ({_fmt(100 * j[f'share_{ph}'], '.0f')}%)"
                   " |")
    lines.append(f"| update (policy forward + backward + optimizer) |"
                 f" {_fmt(t['seconds_policy_forward'] + t['seconds_backward_optimizer'], '.3f')} s"
                 f" (policy forward {_fmt(t['seconds_policy_forward'], '.3f')} s) |"
                 f" {_fmt(j['seconds_update'], '.3f')} s (one jit) |")
    lines += [f"| tokens/s ratio pbrl_jax / TRL | | {_fmt(speed['tokens_per_second_ratio'], '.2f')}"
              " |", ""]
  return "\n".join(lines)


def plot_curves(result: Mapping[str, Any], path: str) -> None:
  """Reward mean, KL and loss per step, TRL and pbrl_jax side by side, one PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, key, title in zip(axes, ("reward_mean", "kl", "loss"), ("reward mean", "KL", "loss")):
    for name, recs, style in (("TRL", result.get("trl_steps", []), "o-"),
                              ("pbrl_jax", result.get("jax_steps", []), "s--")):
      if recs:
        ax.plot([r["step"] for r in recs], [r[key] for r in recs], style, label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend()
  p = result["preset"]
  fig.suptitle(f"GRPO {result['model_name']}: beta={p['beta']} loss_type={p['loss_type']} "
               f"G={p['num_generations']} seed={p['seed']}", fontsize=10)
  fig.tight_layout()
  try:
    atomic_savefig(fig, path)
  finally:
    plt.close(fig)
