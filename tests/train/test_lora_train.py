"""config.model.lora_*: validation, and a tiny LoRA GRPO run through the CLI."""

import importlib
import json
import os

import pytest

from pbrl_jax import metrics as metrics_lib
from pbrl_jax.config_schema import ConfigError
from pbrl_jax.train_spec import TrainerSpec
import train_testlib as tl


def test_lora_keys_validate():
  config = importlib.import_module("configs.tiny").get_config()
  assert TrainerSpec.from_config(config).model.lora_rank == 0  # off by default
  config.model.lora_rank = 8
  config.model.lora_targets = ("q_proj", "v_proj")
  spec = TrainerSpec.from_config(config)
  assert spec.model.lora_targets == ("q_proj", "v_proj") and spec.model.lora_alpha == 32.0
  config.model.lora_targets = ("q_proj", "lm_head")
  with pytest.raises(ConfigError, match=r"config\.model\.lora_targets: .*lm_head"):
    TrainerSpec.from_config(config)
  config.model.lora_targets = ("q_proj",)
  config.model.lora_rank = -1
  with pytest.raises(ConfigError, match=r"config\.model\.lora_rank"):
    TrainerSpec.from_config(config)


@pytest.mark.slow
def test_lora_grpo_trains(tmp_path):
  pivot = str(tmp_path / "pivot_src")
  tl.build_tiny_pivot(pivot)
  workdir = str(tmp_path / "lora")
  tl.copy_pivot(pivot, workdir)
  proc = tl.run_train(workdir, "--config.total_steps=2", "--config.model.lora_rank=4",
                      "--config.model.lora_alpha=8.0", "--config.eval_before_after=False")
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  # Fresh adapters (B = 0): the policy is the reference at step 1; the update moves it.
  assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0.0
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["lora_rank"] == 4
  # pbrl-eval restores the adapters of the LoRA checkpoint (merged into the base).
  proc = tl.subprocess.run(
      [tl.sys.executable, "-m", "pbrl_jax.cli.eval_main", f"--config={tl.TINY}",
       f"--workdir={workdir}", "--config.model.lora_rank=4", "--config.model.lora_alpha=8.0",
       "--name=lora_final"],
      env=tl.cli_env(), capture_output=True, text=True, timeout=900, cwd=tl.REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "restored the LoRA adapters of checkpoint 2" in proc.stderr
  with open(os.path.join(workdir, "eval", "lora_final.json")) as f:
    assert json.load(f)["model"]["checkpoint_step"] == 2
