"""The PPO baseline on Llama-3.1-8B-Instruct: value head on the policy trunk, GAE, k1 KL in
the per-token reward (beta 0.05), the preset of TRL's former PPOTrainer (docs/presets.md).

  launch/tpu_pod.sh --name pbrl --accelerator-type v5p-8 --zone us-east5-a \
      --config configs/llama31_8b_ppo.py --workdir gs://BUCKET/pbrl/llama31_8b_ppo \
      -- --config.model.path=/data/Llama-3.1-8B-Instruct
"""

from configs import common
from configs import llama31_8b_grpo


def get_config(arg: str = ""):
  c = llama31_8b_grpo.get_config(arg)
  grpo_data = c.data
  ppo = common.base_config("ppo")
  c.rl = ppo.rl
  c.rl.num_microbatches = 8
  # PPO samples one completion per prompt: G = 1, with 8x the prompts for the same tokens.
  grpo_data.group_size = 1
  grpo_data.global_batch_size = 512
  c.data = grpo_data
  return c
