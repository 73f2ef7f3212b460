"""PB-RLSVR with GRPO on Qwen3-32B (TPU v5p-64 or larger; FSDP x tensor parallel).

  launch/tpu_pod.sh --name pbrl32 --accelerator-type v5p-64 --zone us-east5-a \
      --config configs/qwen3_32b_grpo.py --workdir gs://BUCKET/pbrl/qwen3_32b \
      -- --config.model.path=/data/Qwen3-32B

Qwen3 writes a `<think>...</think>` block; the rewards split it off as the reasoning.
"""

from configs import llama31_8b_grpo


def get_config(arg: str = ""):
  c = llama31_8b_grpo.get_config(arg)
  c.model.path = "/path/to/Qwen3-32B"
  c.rollout.max_new_tokens = 1024
  c.data.buckets = (256, 512, 1024)
  c.data.global_batch_size = 128
  c.rl.num_microbatches = 16
  c.mesh.fsdp = 8
  c.mesh.tensor = 4
  c.eval.max_new_tokens = 1024
  return c
