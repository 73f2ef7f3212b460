"""PB-RLSVR with GRPO on Llama-3.1-8B-Instruct (TPU v5p-8 / v5e-16 or larger).

Needs a local copy of the model (config.json + safetensors + tokenizer files) and the pivot
references built once (see README):

  pbrl-pivot --config configs/llama31_8b_grpo.py --workdir gs://BUCKET/pbrl/llama31_8b \
      --references=pivot_refs.jsonl
  launch/tpu_pod.sh --name pbrl --accelerator-type v5p-8 --zone us-east5-a \
      --config configs/llama31_8b_grpo.py --workdir gs://BUCKET/pbrl/llama31_8b \
      -- --config.model.path=/data/Llama-3.1-8B-Instruct

Every worker reads and writes gs://BUCKET/pbrl/llama31_8b directly (references, metrics,
checkpoints, reports; launch/README.md).

Every value is our choice (the paper's hyperparameters are not public); where a value follows
common practice for 8B GRPO runs, the comment says so. Check memory first:

  pbrl-plan --config configs/llama31_8b_grpo.py --model configs/model_configs/llama31_8b.json \
      --device v5p-8
"""

from configs import common


def get_config(arg: str = ""):
  del arg
  c = common.base_config("grpo")
  c.total_steps = 1000
  c.checkpoint_every = 50
  c.sample_every = 25
  c.eval_every = 200
  c.model.path = "/path/to/Llama-3.1-8B-Instruct"  # override with --config.model.path
  c.model.dtype = "bfloat16"  # bf16 matmuls on TPU; fp32 master weights and Adam moments
  c.model.param_dtype = "float32"
  c.model.remat = True
  c.rollout.max_new_tokens = 512
  c.rollout.temperature = 1.0
  c.optim.learning_rate = 1e-6
  c.optim.warmup_steps = 20
  # The paper's languages cover MGSM; train on five, hold out the rest in evaluation.
  c.data.langs = ("de", "fr", "ru", "ja", "zh")
  c.data.global_batch_size = 64  # prompts per step
  c.data.group_size = 8  # TRL's default G
  c.data.buckets = (256, 512, 1024)
  c.data.worker_count = 4
  c.data.gsm_symbolic.instances_per_template = 8
  c.rl.num_microbatches = 32  # 512 sequences -> 16 per gradient-accumulation chunk
  c.mesh.data = -1
  c.mesh.fsdp = 4
  c.mesh.tensor = 1
  c.eval.max_new_tokens = 512
  c.eval.batch_size = 64
  return c
