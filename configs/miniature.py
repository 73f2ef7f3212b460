"""The paper's comparison in miniature: every method on the same budget, one command each.

  python -m pbrl_jax.data.arith --out runs/miniature/data          # the problems (seconds)
  pbrl-pivot --config configs/miniature.py:METHOD --workdir runs/miniature/METHOD-s0 \
      --references runs/miniature/data/train_references.jsonl
  pbrl-train --config configs/miniature.py:METHOD --workdir runs/miniature/METHOD-s0 \
      [--config.seed=1]

METHOD is one of
  sft             SFT on the English pivot references (the paper's SFT baseline)
  rlvr_grpo       GRPO with the verifiable 0/1 reward on the gold answer (RLVR)
  rlvr_ppo        PPO with the verifiable reward
  pbrl_embedding  PB-RLSVR, embedding-similarity reward (USE-m3) to the pivot reference
  pbrl_hybrid     PB-RLSVR, hybrid: answer precision vs the pivot's answer + coherence
  pbrl_mt         PB-RLSVR, translate-then-compare; Portuguese only (the one shipped MT pair)
  sft_en          the premise: SFT on the English references for the English questions only
                  (gives the policy an English lead; every arm then starts from it, init=DIR)
experiments/miniature/run.py runs them all, evaluates base and each method, writes the page.

Data: our one-step arithmetic word problems (pbrl_jax.data.arith), parallel in eight
languages, chosen because SmolLM2-135M-Instruct scores 0% on GSM-Symbolic; on these it scores 20.8%
greedy in English and 8-21% in the other languages (experiments/miniature/README.md). Training
languages de, fr, ru, zh; held out (never trained on) es, ja, pt; English is the pivot.

Version 2 (after experiments/diagnosis/): every RL method samples the same rollouts (4 prompts
x G = 8 completions per step at temperature 0.7, at most 128 tokens), takes RLOO advantages
with a token-mean loss and no overlong term, and trains LoRA rank 16 adapters at lr 1e-4 for
40 steps; SFT trains the same adapters at the same rate on one reference per prompt. The
PB-RLSVR methods use reward v2 (configs/reward_defaults.py). `rlvr_ppo` and `pbrl_mt` are kept
as extra arms (PPO with the same rollouts and a value head; MT on Portuguese only).
"""

from configs import common

METHODS = ("sft", "rlvr_grpo", "rlvr_ppo", "pbrl_embedding", "pbrl_hybrid", "pbrl_mt",
           "sft_en")
# The arms of the study (v2); the other two methods run when named.
STUDY_METHODS = ("sft", "rlvr_grpo", "pbrl_hybrid", "pbrl_embedding")
# Test problems per language: 96 gives a smallest detectable effect of about 10 points with
# 3 seeds (experiments/miniature/README.md, power).
N_TEST = 96
TRAIN_LANGS = ("de", "fr", "ru", "zh")
HELD_OUT_LANGS = ("es", "ja", "pt")
MT_LANGS = ("pt",)
DATA_DIR = "runs/miniature/data"


def _parse_arg(arg: str) -> tuple[str, dict[str, str]]:
  """'METHOD[,data_dir=DIR][,smoke=1]' -> (method, options)."""
  method, *rest = (arg or "pbrl_hybrid").split(",")
  options = {}
  for item in rest:
    key, sep, value = item.partition("=")
    if not sep or key not in ("data_dir", "smoke", "init"):
      raise ValueError(f"configs/miniature.py: bad option {item!r} in {arg!r}; expected"
                       " data_dir=DIR, init=DIR or smoke=1")
    options[key] = value
  if method not in METHODS:
    raise ValueError(f"configs/miniature.py: unknown method {method!r}; one of {METHODS}")
  return method, options


def get_config(arg: str = "pbrl_hybrid"):
  """arg: 'METHOD[,data_dir=DIR][,init=DIR][,smoke=1]'.

  init=DIR starts from that HF directory instead of the embedded SmolLM2 (the English-SFT
  premise policy); smoke=1 swaps in a tiny random policy (tests).
  """
  method, options = _parse_arg(arg)
  data_dir = options.get("data_dir", DATA_DIR)
  algorithm = {"sft": "sft", "sft_en": "sft", "rlvr_ppo": "ppo"}.get(method, "grpo")
  c = common.base_config(algorithm)
  c.total_steps = 40
  c.checkpoint_every = 20
  c.sample_every = 10
  c.eval_before_after = False  # run.py evaluates base and every method on one test set
  # SFT keeps this many tokens of the English reference (at most 35); the RL arms sample
  # answers in the question's language, which take up to 99 tokens (configs/common.py).
  c.rollout.max_new_tokens = 64 if algorithm == "sft" else common.ARITH_ROLLOUT_TOKENS
  c.rollout.temperature = 0.7  # see experiments/diagnosis/README.md (F3)
  if options.get("init"):
    c.model.path = options["init"]
  c.model.lora_rank = 16
  c.model.lora_alpha = 32.0
  c.model.vocab_block = 0  # whole logits, as in every arm run so far (small on the CPU)
  c.optim.learning_rate = 1e-4
  c.data.source = "jsonl"
  c.data.path = f"{data_dir}/train.jsonl"
  c.data.langs = {"pbrl_mt": MT_LANGS, "sft_en": ("en",)}.get(method, TRAIN_LANGS)
  c.data.global_batch_size = 4
  c.data.group_size = 1 if algorithm == "sft" else 8
  c.data.buckets = (128, 256)
  if algorithm == "grpo":
    c.rl.advantage = "rloo"
    c.rl.loss_aggregation = "token_mean"
  c.rl.overlong_buffer = 0
  c.reward.kind = {"rlvr_grpo": "verifiable", "rlvr_ppo": "verifiable",
                   "pbrl_embedding": "embedding", "pbrl_mt": "mt"}.get(method, "hybrid")
  c.eval.datasets = [dict(kind="jsonl", path=f"{data_dir}/test.jsonl",
                          langs=["en", *TRAIN_LANGS, *HELD_OUT_LANGS], limit=N_TEST, seed=0,
                          name="arith")]
  c.eval.max_new_tokens = common.ARITH_EVAL_TOKENS
  c.eval.batch_size = 16
  c.eval.n_boot = 1000
  if options.get("smoke") == "1":
    # A tiny random policy; from a premise directory, that directory's tiny weights.
    c.model.random_init = not options.get("init")
    c.model.overrides = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                             num_kv_heads=2, head_dim=16)
    c.total_steps = 1
    c.rollout.max_new_tokens = 16
    c.rl.overlong_buffer = min(c.rl.overlong_buffer, 8)
    c.eval.max_new_tokens = 8
    c.eval.n_boot = 50
  return c
