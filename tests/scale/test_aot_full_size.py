"""Full-size models compile for a 256-device mesh (fake CPU devices, abstract shapes).

Each case runs in a subprocess because the device count is fixed when JAX starts (this test
process has 8). Nothing is allocated: `jit(...).lower(ShapeDtypeStructs).compile()`. The
layer stack is an `nn.scan`, so XLA compiles one layer body whatever the depth: the real
layer counts are kept and the compile stays around a minute. The planner's per-device
prediction is checked against XLA's memory analysis of the same compile.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aot_worker.py")


def _compile(spec, num_devices=256, timeout_s=420):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, WORKER, json.dumps(spec), str(num_devices)],
                        capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env=env,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("AOT_RESULT ")][-1]
  return json.loads(line[len("AOT_RESULT "):])


FP32 = dict(param_dtype="float32", compute_dtype="float32", kv_dtype="float32",
            reference=False)


@pytest.mark.slow
def test_llama31_8b_update_and_decode_on_256_devices():
  result = _compile(dict(model_json="configs/model_configs/llama31_8b.json", mesh=[16, 16, 1],
                         group_size=8, prompts_per_step=32, max_prompt_len=256,
                         max_completion_len=768, **FP32))
  assert result["total_params"] == 8_030_261_248
  # Per-device update arguments: fp32 params and two AdamW moments, split 16 ways by fsdp
  # (the data axis replicates them), plus the small token batch.
  assert result["update"]["xla_argument"] == pytest.approx(8_030_261_248 * 12 / 16, rel=0.01)
  for step in ("update", "decode"):
    r = result[step]
    assert r["ratio"] == pytest.approx(1.0, abs=0.15), (step, r)


@pytest.mark.slow
def test_qwen3_32b_update_and_decode_on_256_devices():
  result = _compile(dict(model_json="configs/model_configs/qwen3_32b.json", mesh=[4, 16, 4],
                         group_size=8, prompts_per_step=8, max_prompt_len=256,
                         max_completion_len=768, **FP32))
  assert 32.5e9 < result["total_params"] < 33.0e9
  for step in ("update", "decode"):
    r = result[step]
    assert r["ratio"] == pytest.approx(1.0, abs=0.15), (step, r)
