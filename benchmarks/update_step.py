"""Throughput and MFU of the jitted GRPO update step on one device.

  python benchmarks/update_step.py                 # SmolLM2-135M-sized, random init
  python benchmarks/update_step.py --weights=gguf  # the embedded SmolLM2-135M-Instruct GGUF
  python benchmarks/update_step.py --quick         # a tiny config, seconds (smoke run)
  python benchmarks/update_step.py --probe_flags   # 2048^3 matmul under XLA CPU flag variants
  python benchmarks/update_step.py --weights=gguf --lora 16 --vocab_block 0 --batch 16 \
      --prompt_group 8 --profile runs/profile  # the demo's update, with a per-op breakdown

MFU = 6 * params * tokens / step time (4 * params * tokens with --lora: no weight gradients of
the frozen base), over a matmul peak measured in the same run (a jitted
2048^3 matmul in the compute dtype, best of several runs; with --prompt_group the tokens are
the rows' tokens, of which the shared prompts are computed once per group, so the "MFU" is
then an effective figure). 6 * N * tokens counts forward and backward of every parameter,
including the tied embedding as the output projection; the step only projects completion
positions to the vocabulary, so this slightly overstates the work when prompts are long.
With --profile DIR, one more update runs under `jax.profiler` and the table adds the XLA ops
that took the most time in it (from the Perfetto trace, by op name: the compiled program's
fusions and library calls), so "where does the step go" has an answer with numbers.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

_MATMUL_SNIPPET = r"""
import time, jax, jax.numpy as jnp
n = {n}
for dt in ("float32", "bfloat16"):
  a = jnp.ones((n, n), dt); b = jnp.ones((n, n), dt)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = 1e9
  for _ in range({reps}):
    t = time.perf_counter(); f(a, b).block_until_ready(); best = min(best, time.perf_counter() - t)
  print(dt, 2 * n ** 3 / best / 1e9)
"""

FLAG_VARIANTS = (
    "",
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
)


def probe_flags(n: int, reps: int) -> list[dict]:
  """GFLOP/s of an n^3 matmul (fp32, bf16) in a fresh process per XLA_FLAGS variant."""
  rows = []
  for flags in FLAG_VARIANTS:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _MATMUL_SNIPPET.format(n=n, reps=reps)],
                          env=env, capture_output=True, text=True, timeout=300)
    row = {"xla_flags": flags or "(none)"}
    if proc.returncode:
      row["error"] = proc.stderr.strip().splitlines()[-1][:200]
    for line in proc.stdout.splitlines():
      dt, gf = line.split()
      row[f"{dt}_gflops"] = round(float(gf), 1)
    rows.append(row)
  return rows


def smollm2_135m_config(dtype: str):
  from pbrl_jax.models.config import DecoderConfig
  return DecoderConfig(model_type="llama", vocab_size=49152, hidden_size=576,
                       intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                       head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
                       tie_word_embeddings=True, max_position_embeddings=8192, dtype=dtype)


def tiny_config(dtype: str):
  from pbrl_jax.models.config import DecoderConfig
  return DecoderConfig(model_type="llama", vocab_size=2048, hidden_size=128,
                       intermediate_size=384, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=32, tie_word_embeddings=True, dtype=dtype)


def top_ops(trace_dir: str, n: int | None) -> list[dict]:
  """The n XLA ops with the most self time in the Perfetto trace under `trace_dir`.

  Self time: an op's duration less that of the ops nested in it on the same thread (a
  while loop contains its body's ops), so no time counts twice. Only the compiled program's
  ops are kept, not the runtime's own spans (PjRt execution, Python frames) around them.
  """
  paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  runtime = ("$", "PjitFunction", "end: ", "Handle ", "Allocate", "Parse", "Wait ",
             "PythonRefManager")
  by_thread = collections.defaultdict(list)
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and not name.startswith(runtime) and "::" not in name:
      by_thread[(e.get("pid"), e.get("tid"))].append(e)
  self_us, count = collections.Counter(), collections.Counter()
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0.0)))
    stack: list[dict] = []  # open ops enclosing the current one
    for e in evs:
      while stack and stack[-1]["ts"] + stack[-1].get("dur", 0.0) <= e["ts"]:
        stack.pop()
      dur = e.get("dur", 0.0)
      self_us[e["name"]] += dur
      count[e["name"]] += 1
      if stack:
        self_us[stack[-1]["name"]] -= dur
      stack.append(e)
  return _rank(self_us, count, n)


def op_kind(name: str) -> str:
  """'ynn_fusion.12' -> 'ynn_fusion': ops of one kind (matmul fusions, copies, ...)."""
  return re.sub(r"\.\d+$", "", name)


def by_kind(ops: list[dict]) -> list[dict]:
  """`top_ops` rows (all of them: n=None) summed by `op_kind`."""
  self_us, count = collections.Counter(), collections.Counter()
  for row in ops:
    self_us[op_kind(row["op"])] += row["ms"] * 1e3
    count[op_kind(row["op"])] += row["calls"]
  return _rank(self_us, count, None)


def _rank(self_us: collections.Counter, count: collections.Counter, n: int | None
          ) -> list[dict]:
  all_ms = max(sum(self_us.values()) / 1e3, 1e-9)
  return [{"op": k, "ms": round(v / 1e3, 1), "calls": count[k],
           "share": round(v / 1e3 / all_ms, 4)} for k, v in self_us.most_common(n)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny config, few steps")
  parser.add_argument("--weights", choices=("random", "gguf"), default="random")
  parser.add_argument("--dtype", default="float32", help="compute dtype (params stay fp32)")
  parser.add_argument("--batch", type=int, default=8, help="sequences per update")
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--completion_len", type=int, default=128)
  parser.add_argument("--microbatches", type=int, default=1)
  parser.add_argument("--prompt_group", type=int, default=1,
                      help="G > 1: groups of G rows share their prompt, run once per group"
                           " (config.rl.share_prompt)")
  parser.add_argument("--lora", type=int, default=0,
                      help="R > 0: train rank-R LoRA adapters on a frozen base (the demo: 16)")
  parser.add_argument("--vocab_block", type=int, default=None,
                      help="config.vocab_block (0: whole logits, as the demo; default: the"
                           " model config's)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after one warmup")
  parser.add_argument("--profile", default="",
                      help="DIR: trace one more update and list the ops that took longest")
  parser.add_argument("--top", type=int, default=25, help="ops listed with --profile")
  parser.add_argument("--probe_flags", action="store_true",
                      help="also time a 2048^3 matmul under XLA CPU flag variants")
  parser.add_argument("--out", default="benchmarks/results/update_step.json")
  args = parser.parse_args()
  if args.quick:
    args.batch, args.prompt_len, args.completion_len, args.steps = 4, 16, 16, 2

  import jax
  import jax.numpy as jnp

  from pbrl_jax import rl
  from pbrl_jax.models import decoder
  from pbrl_jax.models import lora as lora_lib
  from pbrl_jax.models import sharding as shd

  # ---- matmul peak, in this process and dtype ----------------------------------------------
  n = 512 if args.quick else 2048
  a = jnp.ones((n, n), args.dtype)
  mm = jax.jit(lambda x, y: x @ y)
  mm(a, a).block_until_ready()
  best = 1e9
  for _ in range(3 if args.quick else 10):
    t = time.perf_counter()
    mm(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  peak = 2 * n ** 3 / best

  # ---- model and state ----------------------------------------------------------------------
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  optimizer = rl.make_optimizer(rl.make_schedule(rl.Schedule.CONSTANT, 1e-6, 0, 100))
  if args.weights == "gguf":
    from pbrl_jax import models
    bundle = models.from_pretrained(models.smollm2_gguf_path(), dtype=args.dtype)
    config, host_params = bundle.config, bundle.params
  else:
    config = tiny_config(args.dtype) if args.quick else smollm2_135m_config(args.dtype)
    host_params = None
  if args.vocab_block is not None:
    config = config.replace(vocab_block=args.vocab_block)
  lora = lora_lib.LoraSpec(args.lora, 2.0 * args.lora) if args.lora else None
  fns = rl.make_state_fns(config, optimizer, mesh, with_value_head=False, lora=lora)
  base = None
  if lora is not None:  # the frozen base lives outside the state, as in the trainer
    if host_params is None:
      host_params = jax.jit(lambda r: decoder.init_params(config, r))(jax.random.PRNGKey(1))
    base = jax.device_put(host_params, fns.policy_shardings)
    state = fns.from_params(base, jax.random.PRNGKey(0))
  elif host_params is None:
    state = fns.init_random(jax.random.PRNGKey(0))
  else:
    state = fns.from_params(host_params, jax.random.PRNGKey(0))
  n_params = decoder.count_params(state.params["policy"] if lora is None else base)
  hp = rl.UpdateHParams(kl_coef_in_loss=0.04, num_microbatches=args.microbatches,
                        prompt_group=args.prompt_group)
  update_fn = rl.make_update_fn(config, hp, optimizer, mesh, fns.shardings, lora=lora,
                                base_shardings=fns.policy_shardings if lora else None)
  update = update_fn if lora is None else (lambda st, bt: update_fn(st, bt, base))

  b, p, m = args.batch, args.prompt_len, args.completion_len

  def batch(seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    tokens = r.integers(0, config.vocab_size, (b, p + m)).astype(np.int32)
    g = args.prompt_group
    tokens[:, :p] = np.repeat(tokens[::g, :p], g, axis=0)  # groups share their prompt
    return dict(
        tokens=tokens,
        valid=np.ones((b, p + m), np.int32), completion_mask=np.ones((b, m), np.int32),
        old_logp=np.full((b, m), -np.log(config.vocab_size), np.float32),
        ref_logp=np.full((b, m), -np.log(config.vocab_size), np.float32),
        advantages=r.normal(size=(b,)).astype(np.float32))

  t0 = time.perf_counter()
  state, metrics = update(state, batch(0))
  jax.block_until_ready(metrics)
  compile_and_first = time.perf_counter() - t0
  times = []
  for i in range(args.steps):
    t = time.perf_counter()
    state, metrics = update(state, batch(i + 1))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_time = float(np.median(times))
  ops = None
  if args.profile:
    jax.profiler.start_trace(args.profile, create_perfetto_trace=True)
    state, metrics = update(state, batch(args.steps + 1))
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    ops = top_ops(args.profile, None)
    # The compiled program beside the trace: op names in the table are its instructions.
    args_ = (state, batch(0)) if lora is None else (state, batch(0), base)
    with open(os.path.join(args.profile, "update.hlo.txt"), "w") as f:
      f.write(update_fn.lower(*args_).compile().as_text())
  tokens = b * (p + m)
  achieved = (4 if lora else 6) * n_params * tokens / step_time
  result = {
      "config": "tiny" if args.quick else "smollm2-135m", "weights": args.weights,
      "dtype": args.dtype, "params": n_params, "batch": b, "prompt_len": p,
      "completion_len": m, "microbatches": args.microbatches, "lora_rank": args.lora,
      "vocab_block": config.vocab_block,
      "prompt_group": args.prompt_group, "tokens_per_step": tokens,
      "step_time_s": round(step_time, 4), "step_times_s": [round(t, 3) for t in times],
      "first_step_s": round(compile_and_first, 2),
      "tokens_per_s": round(tokens / step_time, 1),
      "achieved_gflops": round(achieved / 1e9, 1),
      f"matmul_peak_gflops_{n}": round(peak / 1e9, 1), "mfu": round(achieved / peak, 4),
      "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
      "devices": str(jax.devices()[0].device_kind), "jax": jax.__version__,
  }
  if ops is not None:
    result["op_kinds"] = by_kind(ops)[:args.top]
    result["top_ops"] = ops[:args.top]
  if args.probe_flags:
    result["flag_probe"] = probe_flags(512 if args.quick else 2048, 3 if args.quick else 5)

  print(f"{'key':<28} value")
  for k, v in result.items():
    if k not in ("flag_probe", "top_ops", "op_kinds", "step_times_s"):
      print(f"{k:<28} {v}")
  for title in ("op_kinds", "top_ops"):
    if title in result:
      print(f"{title} (self time of one profiled update):")
    for row in result.get(title, []):
      print(f"  {row['ms']:>9.1f} ms {100 * row['share']:5.1f}% x{row['calls']:<4} {row['op']}")
  for row in result.get("flag_probe", []):
    print(f"  {row}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
