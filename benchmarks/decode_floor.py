"""The matmul floor of sampling on this machine: a decode step's matrix products alone.

`benchmarks/sampler.py` compares whole `sampling.sample` calls with transformers'
`generate`; this script asks how fast such a call could be at all here. It times the
products a call cannot avoid, with the embedded model's shapes (SmolLM2-135M: every
layer's q, k, v, o, gate, up and down projections, distinct weights per layer, then the
tied unembedding), as one jitted XLA program and as the same PyTorch code:

  * a decode step: `--batch` rows (one token each) through every layer, logits over the
    whole vocabulary;
  * the prefill: `--batch` x `--prompt-len` rows through every layer, logits for the last
    position of each row only.

No attention, norms, cache writes or sampling: a lower bound on a real step's time. From
the XLA figures, the fastest a sample call of `--new-tokens` could be is
prefill + (new_tokens - 1) x step, which caps its tokens per second. The four programs run
interleaved (one call of each per round, a warm-up call each first), medians reported.

  python benchmarks/decode_floor.py --out benchmarks/results/decode_floor.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax import fileio
from pbrl_jax.models import DecoderConfig, from_pretrained
from pbrl_jax.models.embedded import smollm2_gguf_path


def layer_shapes(c: DecoderConfig) -> dict[str, tuple[int, int]]:
  """[in, out] of every projection of one layer."""
  q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  d, f = c.hidden_size, c.intermediate_size
  return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f),
          "up": (d, f), "down": (f, d)}


def flops(c: DecoderConfig, rows: int, logit_rows: int) -> int:
  per_row = sum(i * o for i, o in layer_shapes(c).values()) * c.num_layers
  return 2 * (rows * per_row + logit_rows * c.vocab_size * c.hidden_size)


def random_weights(c: DecoderConfig, seed: int = 0) -> tuple[list[dict[str, np.ndarray]],
                                                            np.ndarray]:
  rng = np.random.default_rng(seed)
  w = lambda *s: (rng.standard_normal(s) * 0.02).astype(np.float32)
  layers = [{k: w(*s) for k, s in layer_shapes(c).items()} for _ in range(c.num_layers)]
  return layers, w(c.vocab_size, c.hidden_size)


def chain(x: Any, layers: list[dict[str, Any]], emb: Any, logit_rows: int, silu: Callable,
          tile: Callable) -> Any:
  """The products of a forward, written once for both frameworks. Attention is a stand-in
  that keeps q, k and v alive (q + k, v tiled to q's width), not the real mixing."""
  for p in layers:
    q, k, v = x @ p["q"], x @ p["k"], x @ p["v"]
    reps = q.shape[-1] // k.shape[-1]
    x = x + (q + tile(k + v, reps)) @ p["o"]
    x = x + (silu(x @ p["gate"]) * (x @ p["up"])) @ p["down"]
  return x[-logit_rows:] @ emb.T


def xla_program(layers, emb, rows: int, logit_rows: int, d: int) -> Callable[[], None]:
  layers = jax.tree.map(jnp.asarray, layers)
  emb = jnp.asarray(emb)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((rows, d)).astype(np.float32))
  fn = jax.jit(lambda layers, emb, x: chain(x, layers, emb, logit_rows, jax.nn.silu,
                                            lambda a, r: jnp.tile(a, (1, r))))
  return lambda: fn(layers, emb, x).block_until_ready()


def torch_program(layers, emb, rows: int, logit_rows: int, d: int) -> Callable[[], None]:
  import torch  # pylint: disable=g-import-not-at-top
  layers = [{k: torch.from_numpy(v) for k, v in p.items()} for p in layers]
  emb = torch.from_numpy(emb)
  x = torch.from_numpy(np.random.default_rng(1).standard_normal((rows, d)).astype(np.float32))

  def run():
    with torch.no_grad():
      chain(x, layers, emb, logit_rows, torch.nn.functional.silu, lambda a, r: a.repeat(1, r))
  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt-len", type=int, default=128)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch programs")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  args = parser.parse_args()

  c = from_pretrained(smollm2_gguf_path()).config
  layers, emb = random_weights(c)
  programs = {"step": (args.batch, args.batch),
              "prefill": (args.batch * args.prompt_len, args.batch)}
  fns: dict[str, Callable[[], None]] = {}
  for name, (rows, logit_rows) in programs.items():
    fns[f"xla {name}"] = xla_program(layers, emb, rows, logit_rows, c.hidden_size)
    if not args.no_torch:
      fns[f"torch {name}"] = torch_program(layers, emb, rows, logit_rows, c.hidden_size)
  for fn in fns.values():
    fn()  # warm-up: compiles (XLA), first-touch allocation (both)
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(args.repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)

  rows_out = []
  for name, ts in times.items():
    impl, program = name.split()
    n = flops(c, *programs[program])
    med = statistics.median(ts)
    rows_out.append({"impl": impl, "program": program, "rows": programs[program][0],
                     "median_s": med, "times_s": ts, "gflop": n / 1e9,
                     "gflop_s": n / med / 1e9})
  by = {(r["impl"], r["program"]): r["median_s"] for r in rows_out}
  call_s = by[("xla", "prefill")] + (args.new_tokens - 1) * by[("xla", "step")]
  ceiling = args.batch * args.new_tokens / call_s
  results = {"model": "SmolLM2-135M shapes (random fp32 weights)", "batch": args.batch,
             "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
             "repeats": args.repeats, "jax": jax.__version__, "rows": rows_out,
             "xla_call_floor_s": call_s, "xla_ceiling_tok_s": ceiling}
  print(f"{'impl':<8}{'program':<10}{'rows':>7}{'median ms':>12}{'GFLOP':>9}{'GFLOP/s':>10}")
  for r in rows_out:
    print(f"{r['impl']:<8}{r['program']:<10}{r['rows']:>7}{1e3 * r['median_s']:>12.1f}"
          f"{r['gflop']:>9.2f}{r['gflop_s']:>10.1f}")
  print(f"a sample call of {args.batch} x {args.new_tokens} new tokens cannot take less than"
        f" {call_s:.2f} s with XLA here: at most {ceiling:.0f} tok/s")
  if args.out:
    fileio.atomic_write_json(args.out, results, indent=2)


if __name__ == "__main__":
  main()
