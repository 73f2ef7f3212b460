"""Whole greedy evaluations: the sampler's decode paths and the evaluation batch size.

`evaluate.generate` over the demo's evaluation prompts (our arithmetic problems in English,
the four training languages and two held out; `--per_lang` of each, chat-templated), on
SmolLM2-135M-Instruct (the embedded GGUF), float32, up to `--new_tokens` tokens with EOS on
(rows stop as they do in a real evaluation, so a batch runs as long as its longest answer).
Variants, each `path@batch`: `stacked` reads the layer stack inside the decode loop,
`per_layer` slices each layer's weights out once per sampler call (`sampling.sample`);
batch = prompts per sampler call. Each variant runs once to warm up (every shape compiled),
then `--repeats` rounds time each variant once in turn (interleaved); medians (the warm-up
call's time, compilation included, is reported too: the decode loop of `per_layer` is
unrolled over the layers and compiles longer). The greedy
texts of every variant are compared with the first's.

  python benchmarks/eval_decode.py --out benchmarks/results/eval_decode.json
  python benchmarks/eval_decode.py --quick --out /tmp/eval_decode.json   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
from eval_padding import arith_prompts  # benchmarks/ is the script's directory

from pbrl_jax import evaluate, fileio
from pbrl_jax.models import from_pretrained
from pbrl_jax.models.embedded import smollm2_gguf_path

LANGS = ("en", "de", "fr", "ru", "zh", "es", "ja")  # configs/demo.py EVAL_LANGS


def parse_variant(text: str) -> tuple[str, int]:
  path, _, batch = text.partition("@")
  if path not in ("stacked", "per_layer") or not batch.isdigit():
    raise SystemExit(f"--variants: {text!r} is not PATH@BATCH with PATH stacked or per_layer")
  return path, int(batch)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--per_lang", type=int, default=8, help="test prompts per language")
  ap.add_argument("--new_tokens", type=int, default=160, help="configs/common.py eval cap")
  ap.add_argument("--variants", default="stacked@16,per_layer@16,per_layer@32")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.quick:
    args.per_lang, args.new_tokens, args.repeats = 1, 8, 1
  variants = [parse_variant(v) for v in args.variants.split(",")]
  prompts = arith_prompts(LANGS, args.per_lang)
  bundle = from_pretrained(smollm2_gguf_path())

  def run(path: str, batch: int) -> evaluate.Completions:
    return evaluate.generate(bundle.params, bundle.config, bundle.tokenizer, prompts,
                             max_new_tokens=args.new_tokens, batch_size=batch,
                             per_layer=path == "per_layer")

  names = [f"{p}@{b}" for p, b in variants]
  first, first_seconds = {}, {}
  for name, variant in zip(names, variants):  # warm-up: compiles each shape
    t = time.perf_counter()
    first[name] = run(*variant)
    first_seconds[name] = time.perf_counter() - t
  reference = [t[0] for t in first[names[0]].texts]
  times = {name: [] for name in names}
  for _ in range(args.repeats):
    for name, variant in zip(names, variants):
      t = time.perf_counter()
      run(*variant)
      times[name].append(time.perf_counter() - t)
  med = {k: statistics.median(v) for k, v in times.items()}
  lengths = [x for per in first[names[0]].lengths for x in per]
  result = {
      "model": "SmolLM2-135M-Instruct (embedded GGUF), float32, greedy",
      "prompts": len(prompts), "langs": list(LANGS), "per_lang": args.per_lang,
      "new_tokens": args.new_tokens, "repeats": args.repeats,
      "answer_tokens": {"mean": sum(lengths) / len(lengths), "max": max(lengths),
                        "capped": sum(c for per in first[names[0]].capped for c in per)},
      "seconds": times, "median_seconds": med,
      # The warm-up call of each variant: its compilations included.
      "first_call_seconds": first_seconds,
      "vs_first": {k: med[names[0]] / v for k, v in med.items()},
      "responses_differing_from_first": {
          k: sum(a != b for a, b in zip(reference, [t[0] for t in first[k].texts]))
          for k in names},
      "machine": f"{os.cpu_count()} CPU cores", "jax": jax.__version__,
  }
  print(json.dumps({k: result[k] for k in ("median_seconds", "first_call_seconds", "vs_first",
                                           "responses_differing_from_first",
                                           "answer_tokens")}, indent=1))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fileio.atomic_write_json(args.out, result)


if __name__ == "__main__":
  main()
