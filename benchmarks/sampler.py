"""Sampler throughput: pbrl_jax vs transformers `generate`, and the memory-bandwidth bound.

Greedy decoding of SmolLM2-135M-Instruct (the embedded GGUF, dequantised once; transformers
loads the very same weights from an HF directory we export), batch 16, 128-token prompts,
128 new tokens, every row forced to the full length (no EOS) on both sides. For each weight
dtype (float32, bfloat16) and each implementation: one warm-up call, then the median of
`--repeats` timed calls. New tokens/s = batch * new_tokens / wall time of the whole call
(prefill included, on both sides).

Bound: a decode step must read every weight once plus the whole KV cache of the static
cache length (our sampler attends over all S = P + M slots each step). The copy bandwidth is
measured here with a large NumPy copy (bytes of the array / copy time), so
  bound tok/s = batch * bandwidth / (weight bytes + kv-cache bytes per step).

  python benchmarks/sampler.py --out /tmp/sampler.json           # full (minutes)
  python benchmarks/sampler.py --quick --out /tmp/sampler.json   # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax import padding
from pbrl_jax import sampling
from pbrl_jax.models import DecoderConfig, ModelBundle, export_hf, from_pretrained, init_params
from pbrl_jax.models.decoder import count_params
from pbrl_jax.models.embedded import smollm2_gguf_path


def copy_bandwidth(nbytes: int, repeats: int = 5) -> float:
  """Best-of-`repeats` bytes/s of copying an `nbytes` float32 array into another one."""
  src = np.ones(nbytes // 4, np.float32)
  dst = np.empty_like(src)
  np.copyto(dst, src)  # fault the pages in
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - t)
  return src.nbytes / best


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
  """Runs fn once to warm up, then `repeats` times; median and all wall times (s)."""
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def tiny_bundle() -> ModelBundle:
  config = DecoderConfig(model_type="llama", vocab_size=512, hidden_size=64,
                         intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=16, tie_word_embeddings=True, eos_token_ids=(2,),
                         pad_token_id=0, max_position_embeddings=1024)
  return ModelBundle(config, init_params(config, jax.random.PRNGKey(0)), None)


def with_dtype(bundle: ModelBundle, dtype: str) -> ModelBundle:
  config = bundle.config.replace(dtype=dtype, param_dtype=dtype)
  return ModelBundle(config, jax.tree.map(lambda x: x.astype(dtype), bundle.params),
                     bundle.tokenizer)


def bench_ours(bundle: ModelBundle, prompts: np.ndarray, new_tokens: int, repeats: int
               ) -> tuple[float, list[float]]:
  config = bundle.config
  valid = np.ones(prompts.shape, bool)

  def run():
    out = sampling.sample(bundle.params, config, prompts, valid, jax.random.PRNGKey(0),
                          max_new_tokens=new_tokens, temperature=0.0, eos_ids=())
    lengths = np.asarray(out.lengths)  # host sync: the call is finished
    assert (lengths == new_tokens).all(), lengths
  return timed(run, repeats)


def bench_torch(hf_dir: str, dtype: str, prompts: np.ndarray, new_tokens: int, repeats: int
                ) -> tuple[float, list[float]]:
  import torch
  import transformers
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype).eval()
  ids = torch.tensor(prompts, dtype=torch.long)
  mask = torch.ones_like(ids)

  def run():
    with torch.no_grad():
      out = model.generate(ids, attention_mask=mask, do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           pad_token_id=0, temperature=None, top_p=None, top_k=None)
    assert out.shape[1] == prompts.shape[1] + new_tokens
  return timed(run, repeats)


def bytes_per_step(config: DecoderConfig, params: Any, batch: int, cache_len: int) -> dict:
  weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  kv = (2 * config.num_layers * batch * cache_len * config.num_kv_heads * config.head_dim *
        jnp.dtype(config.dtype).itemsize)
  return {"weights": int(weights), "kv_cache": int(kv), "total": int(weights + kv)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny random model, tiny sizes")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt-len", type=int, default=128)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--no-torch", action="store_true", help="skip transformers")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  args = parser.parse_args()
  if args.quick:
    args.batch, args.prompt_len, args.new_tokens, args.repeats = 2, 16, 16, 1

  base = tiny_bundle() if args.quick else from_pretrained(smollm2_gguf_path())
  config = base.config
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, config.vocab_size, size=(args.batch, args.prompt_len),
                         dtype=np.int32)
  bandwidth = copy_bandwidth((64 if args.quick else 1024) * 2**20)
  cache_len = (padding.bucket_length(args.prompt_len, sampling.PROMPT_BUCKETS) +
               padding.bucket_length(args.new_tokens, sampling.COMPLETION_BUCKETS))
  new_tokens_total = args.batch * args.new_tokens
  results = {
      "model": "tiny-random" if args.quick else "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)",
      "params": count_params(base.params), "batch": args.batch,
      "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
      "repeats": args.repeats, "cache_len": cache_len,
      "copy_bandwidth_gb_s": bandwidth / 1e9, "jax": jax.__version__,
      "backend": jax.default_backend(), "rows": [],
  }
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = None
    if not args.no_torch:
      hf_dir = export_hf((base.params, config, None), os.path.join(tmp, "hf"))
    for dtype in args.dtypes.split(","):
      bundle = with_dtype(base, dtype)
      b = bytes_per_step(bundle.config, bundle.params, args.batch, cache_len)
      bound = args.batch * bandwidth / b["total"]
      med, times = bench_ours(bundle, prompts, args.new_tokens, args.repeats)
      row = {"impl": "pbrl_jax", "dtype": dtype, "tok_s": new_tokens_total / med,
             "times_s": times, "bytes_per_step": b, "bound_tok_s": bound,
             "fraction_of_bound": new_tokens_total / med / bound}
      results["rows"].append(row)
      if hf_dir is not None:
        med, times = bench_torch(hf_dir, dtype, prompts, args.new_tokens, args.repeats)
        results["rows"].append({"impl": "transformers", "dtype": dtype,
                                "tok_s": new_tokens_total / med, "times_s": times,
                                "bound_tok_s": bound,
                                "fraction_of_bound": new_tokens_total / med / bound})

  torch_fp32 = [r["tok_s"] for r in results["rows"]
                if r["impl"] == "transformers" and r["dtype"] == "float32"]
  best_torch = max([r["tok_s"] for r in results["rows"] if r["impl"] == "transformers"],
                   default=None)
  print(f"{results['model']}: batch {args.batch}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
  print(f"{'impl':<14}{'dtype':<10}{'tok/s':>10}{'bound':>10}{'of bound':>10}"
        f"{'vs torch fp32':>15}{'vs best torch':>15}")
  for r in results["rows"]:
    vs32 = f"{r['tok_s'] / torch_fp32[0]:.2f}x" if torch_fp32 else "-"
    vsbest = f"{r['tok_s'] / best_torch:.2f}x" if best_torch else "-"
    print(f"{r['impl']:<14}{r['dtype']:<10}{r['tok_s']:>10.1f}{r['bound_tok_s']:>10.0f}"
          f"{100 * r['fraction_of_bound']:>9.0f}%{vs32:>15}{vsbest:>15}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
