"""The demo's seconds-by-phase summary, read from a run's own files."""

import json

from pbrl_jax import demo
from pbrl_jax import fileio


def test_time_breakdown_reads_evaluations_and_step_medians(tmp_path):
  workdir = str(tmp_path)
  fileio.atomic_write_json(tmp_path / "eval_before.json",
                           {"settings": {"generation_seconds": 301.25}})
  steps = [{"step": 1, "time/step": 50.0, "time/rollout": 20.0, "time/update": 25.0},
           {"step": 2, "time/step": 40.0, "time/rollout": 14.0, "time/update": 21.0},
           {"step": 3, "time/step": 44.0, "time/rollout": 16.0, "time/update": 22.0,
            "time/checkpoint": 3.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
  got = demo.time_breakdown(workdir, {"warm start": 412.04, "grpo run": 900.0})
  assert got["warm start"] == 412.0 and got["grpo run"] == 900.0
  assert got["evaluation before (generation)"] == 301.2
  assert "evaluation after (generation)" not in got  # a run without one says nothing
  assert got["grpo steps"] == 134.0
  # Medians over the steps; a stage that not every step has (checkpoints) is left out.
  assert got["grpo step median"] == {"rollout": 16.0, "step": 44.0, "update": 22.0}


def test_time_breakdown_of_an_empty_workdir_is_the_measured_phases(tmp_path):
  assert demo.time_breakdown(str(tmp_path), {"references": 2.26}) == {"references": 2.3}
