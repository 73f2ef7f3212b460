"""Evaluation generation: length-sorted quarter-octave batches vs one power-of-two bucket.

`evaluate.generate` sorts the prompts by length and pads each batch to its quarter-octave
length (`padding.octave_bucket_length`). The baseline is what it did before: every prompt
left-padded to the power-of-two bucket of the longest prompt, in input order. Both run the
same greedy sampler on SmolLM2-135M-Instruct (the embedded GGUF) over the miniature study's
arithmetic prompts, an equal number per language (their templated lengths differ by
language: 80-156 tokens), batch 16, 64 new tokens. Calls alternate (baseline, ours) after
one warm-up call of each (compilation excluded); medians of the wall times; the greedy
texts of the two must be identical.

  python benchmarks/eval_padding.py --out benchmarks/results/eval_padding.json
  python benchmarks/eval_padding.py --quick --out /tmp/eval_padding.json   # 2 prompts a language
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax

from pbrl_jax import evaluate, fileio, padding, sampling
from pbrl_jax.data import arith
from pbrl_jax.models import from_pretrained
from pbrl_jax.models.embedded import smollm2_gguf_path

LANGS = ("en", "de", "fr", "ru", "zh", "es", "ja", "pt")


def arith_prompts(langs, per_lang: int) -> list[str]:
  """The evaluation prompts of `per_lang` of our arithmetic test problems in each language."""
  with tempfile.TemporaryDirectory() as tmp:
    arith.write_split(tmp, langs=langs, n_train=8, n_test=per_lang, seed=0)
    examples = evaluate.load_dataset(
        evaluate.DatasetSpec(kind="jsonl", path=os.path.join(tmp, "test.jsonl"), langs=langs,
                             limit=per_lang, seed=0, name="arith"), tmp)
  return [evaluate.default_prompt(e) for e in examples]


def one_bucket_generate(bundle, prompts, max_new_tokens, batch_size):
  """The baseline: input order, every batch padded to the longest prompt's power of two."""
  ids = sampling.encode_prompts(bundle.tokenizer, prompts, chat=True)
  bucket = padding.bucket_length(max(len(x) for x in ids), sampling.PROMPT_BUCKETS)
  eos = sampling.eos_ids(bundle.config, bundle.tokenizer)
  texts = []
  for b in range(0, len(ids), batch_size):
    chunk = ids[b:b + batch_size]
    rows = chunk + [[]] * (batch_size - len(chunk))
    tokens, valid = padding.left_pad(rows, bucket, bundle.config.pad_token_id)
    out = sampling.sample(bundle.params, bundle.config, tokens, valid, jax.random.PRNGKey(0),
                          max_new_tokens=max_new_tokens, temperature=0.0, eos_ids=eos,
                          prompt_buckets=(bucket,))
    toks, lens = jax.device_get((out.tokens, out.lengths))
    texts += [bundle.tokenizer.decode(toks[r, :lens[r]].tolist(), skip_special_tokens=True)
              for r in range(len(chunk))]
  return texts, bucket


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--per_lang", type=int, default=8, help="test prompts per language")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.quick:
    args.per_lang, args.new_tokens, args.repeats = 2, 8, 1
  prompts = arith_prompts(LANGS, args.per_lang)
  bundle = from_pretrained(smollm2_gguf_path())
  lengths = [len(x) for x in sampling.encode_prompts(bundle.tokenizer, prompts)]

  def ours():
    return evaluate.generate(bundle.params, bundle.config, bundle.tokenizer, prompts,
                             max_new_tokens=args.new_tokens, batch_size=args.batch).texts

  def baseline():
    return one_bucket_generate(bundle, prompts, args.new_tokens, args.batch)[0]

  # Warm-up (compiles every shape of both), and the outputs must agree.
  ours_texts = [t[0] for t in ours()]
  base_texts = baseline()
  differ = sum(a != b for a, b in zip(ours_texts, base_texts))
  times = {"one_bucket": [], "octave_sorted": []}
  for _ in range(args.repeats):
    for name, fn in (("one_bucket", baseline), ("octave_sorted", ours)):
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  med = {k: statistics.median(v) for k, v in times.items()}
  result = {
      "model": "SmolLM2-135M-Instruct (embedded GGUF), float32, greedy",
      "prompts": len(prompts), "per_lang": args.per_lang, "batch": args.batch,
      "new_tokens": args.new_tokens, "repeats": args.repeats,
      "prompt_tokens": {"min": min(lengths), "max": max(lengths),
                        "mean": sum(lengths) / len(lengths)},
      "one_bucket_length": padding.bucket_length(max(lengths), sampling.PROMPT_BUCKETS),
      "octave_lengths": sorted({padding.octave_bucket_length(max(lengths[i] for i in chunk))
                                for chunk in _sorted_batches(lengths, args.batch)}),
      "seconds": times, "median_seconds": med,
      "speedup": med["one_bucket"] / med["octave_sorted"],
      "responses_differing": differ,
      "machine": f"{os.cpu_count()} CPU cores",
  }
  print(json.dumps({k: result[k] for k in ("median_seconds", "speedup", "responses_differing",
                                           "one_bucket_length", "octave_lengths")}, indent=1))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fileio.atomic_write_json(args.out, result)


def _sorted_batches(lengths, batch):
  order = sorted(range(len(lengths)), key=lambda i: lengths[i])
  return [order[i:i + batch] for i in range(0, len(order), batch)]


if __name__ == "__main__":
  main()
