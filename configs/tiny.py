"""A random tiny policy with SmolLM2's tokenizer: a few seconds per step on CPU (tests).

  pbrl-pivot --config configs/tiny.py --workdir /tmp/tiny --oracle
  pbrl-train --config configs/tiny.py --workdir /tmp/tiny
  pbrl-train --config configs/tiny.py:ppo --workdir /tmp/tiny_ppo
  pbrl-train --config configs/tiny.py:sft --workdir /tmp/tiny_sft

':real' (e.g. 'grpo,real') keeps every shape of the run but loads the embedded
SmolLM2-135M-Instruct weights instead of the random tiny policy: slower (minutes a step), with
logits a trained model gives (a random tiny policy's are nearly flat, which hides numerics
such as the sampler/trainer mismatch in bfloat16).
"""

from configs import common


def get_config(arg: str = "grpo"):
  parts = [p for p in (arg or "grpo").split(",") if p]
  real = "real" in parts
  algorithm = next((p for p in parts if p != "real"), "grpo")
  c = common.base_config(algorithm)
  c.total_steps = 4
  c.checkpoint_every = 2
  c.sample_every = 2
  c.eval_before_after = False
  c.model.random_init = True
  # Whole logits: the tiny trunk makes the 49,152-token unembedding nearly all of the FLOPs,
  # which the blockwise pass would recompute (tests/models/test_vocab_blocks.py covers it).
  c.model.vocab_block = 0
  c.model.overrides = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                           num_kv_heads=2, head_dim=16)
  if real:
    c.model.random_init = False
    c.model.overrides = {}
  c.rollout.max_new_tokens = 16
  c.optim.learning_rate = 1e-3
  c.data.langs = ("de", "fr")
  c.data.global_batch_size = 4
  c.data.group_size = 1 if algorithm == "sft" else 2  # SFT: one reference per prompt
  c.data.buckets = (256, 512)
  c.data.gsm_symbolic.templates = (0, 1, 2, 3, 4, 5, 6, 7)
  c.eval.datasets = [dict(kind="gsm_symbolic", path="", langs=["de", "fr"], limit=2, seed=1,
                          name="gsm_symbolic")]
  c.eval.max_new_tokens = 16
  c.eval.batch_size = 4
  c.eval.n_boot = 100
  return c
