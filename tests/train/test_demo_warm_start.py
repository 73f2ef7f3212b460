"""The demo's English warm start end to end on a tiny random policy: data, references, SFT on
English only, adapters merged and exported as an HF directory the GRPO run starts from."""

import os
import sys

import jax
import numpy as np
import pytest

from pbrl_jax import checkpoint as ckpt_lib
from pbrl_jax import demo
from pbrl_jax import metrics as metrics_lib
from pbrl_jax.models import bundle as bundle_lib
from pbrl_jax.models import from_pretrained

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=16)


def test_warm_start_trains_on_english_and_exports_the_merged_policy(tmp_path):
  sys.path.insert(0, REPO)
  from configs import demo as demo_config  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "demo")
  config = demo_config.get_config()
  config.pivot.encoders = ()  # the GRPO side's cache is not what this test is about
  demo.prepare(config, workdir)
  premise = demo_config.get_config("premise")
  premise.model.random_init = True
  premise.model.overrides = TINY
  premise.data.global_batch_size = 8  # the 8 test devices each take a row
  model_dir = demo.warm_start(premise, workdir, steps=2)

  rows = metrics_lib.read_jsonl(os.path.join(workdir, "premise", "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["sft/nll"]) for r in rows)
  with open(os.path.join(workdir, "premise", "config.json")) as f:
    assert '"langs": [\n      "en"\n    ]' in f.read()  # English questions only
  # The exported directory holds the trained policy: its weights are the checkpoint's
  # adapters merged into the base (restored here without the export), not the base's.
  exported = from_pretrained(model_dir)
  assert exported.config.num_layers == 2 and exported.tokenizer is not None
  run_dir = os.path.join(workdir, "premise")
  merged = bundle_lib.ModelBundle(*bundle_lib.load_policy(premise.model, premise.seed))
  base = jax.tree.map(np.asarray, merged.params)
  ckpt_lib.restore_policy(merged, run_dir, 2, premise.model)
  flat_exported = jax.tree.leaves(exported.params)
  for got, want in zip(flat_exported, jax.tree.leaves(merged.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert any(not np.array_equal(np.asarray(a), b)
             for a, b in zip(flat_exported, jax.tree.leaves(base)))
  # A second call reuses the export.
  mtime = os.path.getmtime(os.path.join(model_dir, "config.json"))
  assert demo.warm_start(premise, workdir, steps=2) == model_dir
  assert os.path.getmtime(os.path.join(model_dir, "config.json")) == mtime
