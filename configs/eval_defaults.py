"""Defaults of the `eval` config section (every value is our choice, not the paper's).

The paper (PB-RLSVR, arXiv 2509.25543) reports MGSM and MMLU-ProX accuracy but does not publish
its decoding settings or prompts. Use from another config:

  from configs import eval_defaults
  config.eval = eval_defaults.get_config()

`pbrl_jax.evaluate.EvalSpec.from_config(config.eval)` validates the section once;
`pbrl-eval --config ... --workdir DIR` and the trainer's before/after evaluation read it.
"""

import ml_collections

# MGSM's languages (en, es, fr, de, ru, zh, ja, th, sw, bn, te): the paper's math benchmark, so
# our embedded GSM-Symbolic stand-in covers the same ones.
MGSM_LANGS = ("en", "es", "fr", "de", "ru", "zh", "ja", "th", "sw", "bn", "te")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Datasets, each {kind, path, langs, limit, seed, name} (see pbrl_jax.evaluate.DatasetSpec).
  # Default: the embedded multilingual GSM-Symbolic in MGSM's languages, instance seed 1 (the
  # trainer draws its questions with seed 0, so these are other numbers and names of the same
  # templates: held out in instances, not in templates), 32 per language so a CPU run ends in
  # minutes. For the paper's benchmarks add {kind: 'mgsm', path: DIR} and
  # {kind: 'mmlu_prox', path: DIR} pointing at local copies.
  c.datasets = [
      dict(kind="gsm_symbolic", path="", langs=list(MGSM_LANGS), limit=32, seed=1,
           name="gsm_symbolic"),
  ]
  # Completion cap: room for a short chain of thought plus the '#### N' line. Answers cut off
  # by it are counted (`length_capped`).
  c.max_new_tokens = 256
  # Prompts per sampler call (batches of similar prompt lengths; the last batch is padded).
  c.batch_size = 16
  # 1: greedy decoding, accuracy = exact match. > 1: sample at `temperature` and report the
  # unbiased pass@k (Chen et al., 2021) for k = 1, 2, 4, ... up to num_samples.
  c.num_samples = 1
  # 0 = greedy (needed for num_samples == 1 to be deterministic).
  c.temperature = 0.0
  # Nucleus mass when sampling; 1 disables.
  c.top_p = 1.0
  # Sampling seed and the seed of every bootstrap confidence interval.
  c.seed = 0
  # Bootstrap resamples per language (percentile 95% CI).
  c.n_boot = 1000
  # A response counts as written in the question's language when `language_consistency`
  # reaches this (the language guard's full-reward point, configs/reward_defaults.py).
  c.language_threshold = 0.6
  # A response counts as a repetition loop from this `guards.repetition` score (where the
  # repetition guard starts to cut the reward).
  c.repetition_threshold = 0.5
  return c
