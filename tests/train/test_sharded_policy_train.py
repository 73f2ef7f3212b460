"""A loaded (not random) policy trains the same when its weights are read sharded.

`train.build` reads the policy straight into the state's shardings. The path it replaced (the
whole model loaded onto one device, then re-sliced onto the mesh) is rebuilt here by loading
without the mesh; on the same (2, 2, 2) mesh of 8 fake CPU devices both must log the same
metrics for two GRPO steps (the issue's bound, 1e-5 relative; the programs and the weights
are the same, so they agree exactly).

(A (2, 2, 2) run against an (8, 1, 1) run is not such a check: the sharded matmuls sum in
another order, and the KL, a mean of squared differences of nearly equal log-probs, then
differs by ~1.6e-4 relative, 1.3e-7 absolute, at step 2.)
"""

import math
import os

import pytest

import train_testlib as tl
from pbrl_jax import metrics as metrics_lib
from pbrl_jax import train as train_lib
from pbrl_jax.models import bundle, hf

pytestmark = pytest.mark.slow

KEYS = ("loss", "kl", "reward_mean", "grad_norm", "entropy", "policy_loss",
        "rollout/mean_length")


def test_loaded_policy_read_sharded_logs_the_old_paths_metrics(tmp_path, monkeypatch):
  # The tiny config's random policy (SmolLM2's tokenizer) written as an HF directory, then
  # loaded by path like any checkpoint.
  model_dir = str(tmp_path / "policy")
  cfg, params, tokenizer = bundle.load_policy(tl.tiny_config("grpo").model, 0)
  hf.export_hf((params, cfg, tokenizer), model_dir)
  pivot = str(tmp_path / "pivot_src")
  tl.build_tiny_pivot(pivot)
  load_sharded = bundle.load_policy
  rows = {}
  for name in ("one_device_then_mesh", "sharded"):
    if name == "one_device_then_mesh":
      monkeypatch.setattr(train_lib.bundle_lib, "load_policy",
                          lambda model, seed, mesh=None: load_sharded(model, seed))
    else:  # train.build's own call, recorded: it must hand the loader the run's mesh
      meshes = []
      monkeypatch.setattr(train_lib.bundle_lib, "load_policy", lambda model, seed, mesh=None: (
          meshes.append(mesh), load_sharded(model, seed, mesh))[1])
    workdir = str(tmp_path / name)
    tl.copy_pivot(pivot, workdir)
    config = tl.tiny_config("grpo", **{
        "model.path": model_dir, "model.random_init": False, "model.overrides": {},
        "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "total_steps": 2,
        "checkpoint_every": 100, "sample_every": 0})
    train_lib.train(config, workdir)
    rows[name] = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert len(meshes) == 1 and dict(meshes[0].shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  old, new = rows["one_device_then_mesh"], rows["sharded"]
  assert [r["step"] for r in new] == [1, 2] == [r["step"] for r in old]
  for want, got in zip(old, new):
    for key in KEYS:
      assert math.isfinite(want[key])
      assert got[key] == pytest.approx(want[key], rel=1e-5, abs=0), (want["step"], key)
