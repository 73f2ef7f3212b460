"""Throughput and MFU of the jitted GRPO update step on one device.

  python benchmarks/update_step.py                 # SmolLM2-135M-sized, random init
  python benchmarks/update_step.py --weights=gguf  # the embedded SmolLM2-135M-Instruct GGUF
  python benchmarks/update_step.py --quick         # a tiny config, seconds (smoke run)
  python benchmarks/update_step.py --probe_flags   # 2048^3 matmul under XLA CPU flag variants

MFU = 6 * params * tokens / step time, over a matmul peak measured in the same run (a jitted
2048^3 matmul in the compute dtype, best of several runs; with --prompt_group the tokens are
the rows' tokens, of which the shared prompts are computed once per group, so the "MFU" is
then an effective figure). 6 * N * tokens counts forward and backward of every parameter,
including the tied embedding as the output projection; the step only projects completion
positions to the vocabulary, so this slightly overstates the work when prompts are long.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
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
  parser.add_argument("--steps", type=int, default=3, help="timed steps after one warmup")
  parser.add_argument("--probe_flags", action="store_true",
                      help="also time a 2048^3 matmul under XLA CPU flag variants")
  parser.add_argument("--out", default="benchmarks/results/update_step.json")
  args = parser.parse_args()
  if args.quick:
    args.batch, args.prompt_len, args.completion_len, args.steps = 4, 16, 16, 2

  import jax
  import jax.numpy as jnp
  import optax

  from pbrl_jax import rl
  from pbrl_jax.models import decoder
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
  fns = rl.make_state_fns(config, optimizer, mesh, with_value_head=False)
  if host_params is None:
    state = fns.init_random(jax.random.PRNGKey(0))
  else:
    state = fns.from_params(host_params, jax.random.PRNGKey(0))
  n_params = decoder.count_params(state.params["policy"])
  hp = rl.UpdateHParams(kl_coef_in_loss=0.04, num_microbatches=args.microbatches,
                        prompt_group=args.prompt_group)
  update = rl.make_update_fn(config, hp, optimizer, mesh, fns.shardings)

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
  tokens = b * (p + m)
  achieved = 6 * n_params * tokens / step_time
  result = {
      "config": "tiny" if args.quick else "smollm2-135m", "weights": args.weights,
      "dtype": args.dtype, "params": n_params, "batch": b, "prompt_len": p,
      "completion_len": m, "microbatches": args.microbatches,
      "prompt_group": args.prompt_group, "tokens_per_step": tokens,
      "step_time_s": round(step_time, 4), "first_step_s": round(compile_and_first, 2),
      "tokens_per_s": round(tokens / step_time, 1),
      "achieved_gflops": round(achieved / 1e9, 1),
      f"matmul_peak_gflops_{n}": round(peak / 1e9, 1), "mfu": round(achieved / peak, 4),
      "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
      "devices": str(jax.devices()[0].device_kind), "jax": jax.__version__,
  }
  if args.probe_flags:
    result["flag_probe"] = probe_flags(512 if args.quick else 2048, 3 if args.quick else 5)

  print(f"{'key':<28} value")
  for k, v in result.items():
    if k != "flag_probe":
      print(f"{k:<28} {v}")
  for row in result.get("flag_probe", []):
    print(f"  {row}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
