"""The run report names what its plots show: a run without a KL term (SFT, GRPO at beta 0)
logs no `kl`, and its loss plot must not claim one."""

import json
import os

from pbrl_jax import report


def _write_metrics(workdir, rows):
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def _plot_captions(path):
  with open(path) as f:
    return [line[4:] for line in f.read().splitlines() if line.startswith("### ")]


def test_the_loss_plot_names_the_kl_only_when_the_run_logged_one(tmp_path):
  with_kl, without_kl = tmp_path / "grpo", tmp_path / "sft"
  for d in (with_kl, without_kl):
    d.mkdir()
  _write_metrics(with_kl, [{"step": i, "loss": 1.0 / i, "kl": 0.01 * i} for i in range(1, 6)])
  _write_metrics(without_kl, [{"step": i, "loss": 1.0 / i} for i in range(1, 6)])
  assert "Loss and KL to the reference" in _plot_captions(report.write_report(str(with_kl)))
  captions = _plot_captions(report.write_report(str(without_kl)))
  assert "Training loss (this run has no KL term)" in captions
  assert not any("KL to the reference" in c for c in captions)
  assert os.path.getsize(without_kl / "kl_loss.png") > 1000
