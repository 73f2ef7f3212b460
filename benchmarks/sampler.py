"""Sampler throughput: pbrl_jax vs transformers `generate`, and the memory-bandwidth bound.

Greedy decoding of SmolLM2-135M-Instruct (the embedded GGUF, dequantised once; transformers
loads the very same weights from an HF directory we export), batch 16, 128-token prompts,
128 new tokens, every row forced to the full length (no EOS) on both sides. For each weight
dtype (float32, bfloat16): one warm-up call of each implementation, then `--repeats` rounds
in which each is timed once in turn (interleaved, so a drifting machine moves every side
alike); medians. New tokens/s = batch * new_tokens / wall time of the whole call (prefill
included, on both sides). Ours runs in both decode paths of `sampling.sample`: `per_layer`
(each layer's weights sliced out of the stack once per call, the CPU default) and `stacked`
(the stack read inside the loop, the default elsewhere); their tokens must be equal.

Bound: a decode step must read every weight once plus the whole KV cache of the static
cache length (our sampler attends over all S = P + M slots each step). The copy bandwidth is
measured here with a large NumPy copy (bytes of the array / copy time), so
  bound tok/s = batch * bandwidth / (weight bytes + kv-cache bytes per step).

  python benchmarks/sampler.py --out /tmp/sampler.json           # full (minutes)
  python benchmarks/sampler.py --quick --out /tmp/sampler.json   # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax import fileio
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


def timed_interleaved(fns: dict[str, Callable[[], Any]], repeats: int
                      ) -> dict[str, list[float]]:
  """Each fn once to warm up, then `repeats` rounds timing each fn once in turn (s)."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return times


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


def ours(bundle: ModelBundle, prompts: np.ndarray, new_tokens: int, per_layer: bool,
         tokens_out: dict[str, np.ndarray]) -> Callable[[], None]:
  """One greedy `sampling.sample` call; its tokens are kept in `tokens_out[path]`."""
  config = bundle.config
  valid = np.ones(prompts.shape, bool)
  path = "per_layer" if per_layer else "stacked"

  def run():
    out = sampling.sample(bundle.params, config, prompts, valid, jax.random.PRNGKey(0),
                          max_new_tokens=new_tokens, temperature=0.0, eos_ids=(),
                          per_layer=per_layer)
    tokens_out[path] = np.asarray(out.tokens)  # host sync: the call is finished
    lengths = np.asarray(out.lengths)
    assert (lengths == new_tokens).all(), lengths
  return run


def torch_generate(hf_dir: str, dtype: str, prompts: np.ndarray, new_tokens: int
                   ) -> Callable[[], None]:
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
  return run


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
  parser.add_argument("--paths", default="per_layer,stacked",
                      help="our decode paths to time (per_layer, stacked)")
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
      tokens: dict[str, np.ndarray] = {}
      fns = {f"pbrl_jax {path}": ours(bundle, prompts, args.new_tokens,
                                      path == "per_layer", tokens)
             for path in args.paths.split(",")}
      if hf_dir is not None:
        fns["transformers"] = torch_generate(hf_dir, dtype, prompts, args.new_tokens)
      for name, times in timed_interleaved(fns, args.repeats).items():
        med = statistics.median(times)
        impl, _, path = name.partition(" ")
        row = {"impl": impl, "path": path or None, "dtype": dtype,
               "tok_s": new_tokens_total / med, "times_s": times, "bound_tok_s": bound,
               "fraction_of_bound": new_tokens_total / med / bound}
        if impl == "pbrl_jax":
          row["bytes_per_step"] = b
        results["rows"].append(row)
      if len(tokens) == 2:
        same = bool(np.array_equal(tokens["per_layer"], tokens["stacked"]))
        results.setdefault("paths_same_tokens", {})[dtype] = same

  torch_fp32 = [r["tok_s"] for r in results["rows"]
                if r["impl"] == "transformers" and r["dtype"] == "float32"]
  best_torch = max([r["tok_s"] for r in results["rows"] if r["impl"] == "transformers"],
                   default=None)
  print(f"{results['model']}: batch {args.batch}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
  print(f"{'impl':<24}{'dtype':<10}{'tok/s':>10}{'bound':>10}{'of bound':>10}"
        f"{'vs torch fp32':>15}{'vs best torch':>15}")
  for r in results["rows"]:
    vs32 = f"{r['tok_s'] / torch_fp32[0]:.2f}x" if torch_fp32 else "-"
    vsbest = f"{r['tok_s'] / best_torch:.2f}x" if best_torch else "-"
    name = f"{r['impl']} {r['path'] or ''}".strip()
    print(f"{name:<24}{r['dtype']:<10}{r['tok_s']:>10.1f}{r['bound_tok_s']:>10.0f}"
          f"{100 * r['fraction_of_bound']:>9.0f}%{vs32:>15}{vsbest:>15}")
  if "paths_same_tokens" in results:
    print(f"per_layer and stacked give the same tokens: {results['paths_same_tokens']}")
  if args.out:
    fileio.atomic_write_json(args.out, results, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
