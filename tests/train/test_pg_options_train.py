"""`pbrl-train` with the policy-gradient options of the TRL family switched on.

The sampler/trainer mismatch correction, the top-entropy-quantile mask, DAPO's dynamic
sampling and the VESPO policy loss (which folds the correction's token weights into its
sequence weight) run end to end on configs/tiny.py, as do GSPO's sequence weights, SAPO,
LUSPO's sum, CISPO and DAPO's overlong filtering, and their metrics reach metrics.jsonl (the
refill itself is checked stage by stage in tests/train/test_stages.py: the tiny run's
continuous rewards leave no group of equal rewards to replace). In float32 the sampler (incremental,
KV cache) and the trainer (full forward) run the same code in the same precision, so the
mismatch is rounding and no weight leaves the bounds.

Not shown here: the non-zero mismatch of bfloat16. With the tiny random policy the logits
are nearly flat and a bfloat16 run measures the float32 figure (mean |diff| 2.8e-7); with
the embedded 135M weights (`configs/tiny.py:real`, 75 s a step, too slow for the suite) one
step measured 0.037 in bfloat16 against 5.1e-6 in float32 (docs/presets.md gives the
commands). The weights' arithmetic is checked against NumPy loops and TRL (tests/rl).
"""

import os

import numpy as np
import pytest

import train_testlib as tl
from pbrl_jax import metrics as metrics_lib

pytestmark = pytest.mark.slow


def test_correction_and_entropy_mask_run_and_log(tmp_path):
  workdir = str(tmp_path / "run")
  tl.build_tiny_pivot(workdir)
  proc = tl.run_train(workdir, "--config.total_steps=2", "--config.checkpoint_every=2",
                      "--config.rl.rollout_correction=token_mask",
                      "--config.rl.rollout_correction_low=0.5",
                      "--config.rl.rollout_correction_high=2.0",
                      "--config.rl.top_entropy_quantile=0.5",
                      "--config.rl.dynamic_sampling_batches=1",
                      "--config.rl.policy_loss=vespo")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert len(rows) == 2
  for r in rows:
    assert np.isfinite(r["loss"]) and r["skipped"] == 0.0
    # About half the tokens carry the policy term (ties and small batches: not exactly).
    assert 0.3 <= r["entropy_mask_kept_frac"] <= 0.7, r["entropy_mask_kept_frac"]
    # float32: the trainer's old log-probs are the sampler's up to rounding.
    assert r["mismatch/logp_diff_max"] < 1e-3, r["mismatch/logp_diff_max"]
    assert r["mismatch/bounded_frac"] == 0.0
    assert r["mismatch/is_ratio_min"] <= r["mismatch/is_ratio_mean"] <= r["mismatch/is_ratio_max"]
    assert abs(r["mismatch/is_ratio_mean"] - 1.0) < 1e-3
    assert 0.0 <= r["dynamic/informative_frac_first"] <= r["dynamic/informative_frac"] <= 1.0
    assert r["dynamic/extra_batches"] in (0.0, 1.0)
    # One update per rollout: the sequence ratio W is 1 up to rounding, and so is phi(W).
    assert abs(r["vespo_phi_mean"] - 1.0) < 1e-3, r["vespo_phi_mean"]


@pytest.mark.parametrize("flags", [
    # GSPO's sequence weights with SAPO's gate and LUSPO's length-scaled sum.
    ("--config.rl.policy_loss=sapo", "--config.rl.importance_level=sequence",
     "--config.rl.loss_aggregation=seq_sum"),
    # CISPO with DAPO's overlong filtering. The random policy almost never samples EOS, so
    # every completion runs to the cap and the filter leaves no token: the run checks the
    # wiring (exactly the capped rows are masked), tests/rl the arithmetic.
    ("--config.rl.policy_loss=cispo", "--config.rl.eps_high=5.0",
     "--config.rl.mask_truncated=true"),
], ids=["sapo_sequence_seq_sum", "cispo_masked"])
def test_the_other_policy_losses_train(tmp_path, flags):
  """One `pbrl-train` step per remaining policy-gradient option, with finite metrics."""
  workdir = str(tmp_path / "run")
  tl.build_tiny_pivot(workdir)
  proc = tl.run_train(workdir, "--config.total_steps=1", "--config.checkpoint_every=1", *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (r,) = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert np.isfinite(r["loss"]) and r["skipped"] == 0.0
  if "--config.rl.mask_truncated=true" in flags:
    assert r["rollout/loss_masked_frac"] == r["rollout/length_capped_frac"] == 1.0, r
  else:  # on policy: every ratio is 1 up to rounding
    assert r["num_tokens"] > 1 and abs(r["ratio_mean"] - 1.0) < 1e-3, r
