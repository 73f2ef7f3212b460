"""Measures loading the embedded SmolLM2-135M-Instruct GGUF (model + tokenizer).

  .venv/bin/python tests/models/measure_gguf_load.py

Prints the first call in a fresh process (JAX start-up included, imports excluded) and the
best of the following calls, wall and CPU time, with the machine's load average, and writes
the numbers as JSON to stdout's last line.
"""

import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

t0 = time.perf_counter()
import jax  # noqa: E402

from pbrl_jax.models import from_pretrained, smollm2_gguf_path  # noqa: E402

imports_s = time.perf_counter() - t0


def _once() -> tuple[float, float]:
  t, c = time.perf_counter(), time.process_time()
  bundle = from_pretrained(smollm2_gguf_path())
  jax.block_until_ready(bundle.params)
  assert bundle.tokenizer is not None
  return time.perf_counter() - t, time.process_time() - c


def main() -> None:
  first = _once()
  rest = [_once() for _ in range(4)]
  result = {
      "imports_s": round(imports_s, 3),
      "first_wall_s": round(first[0], 3), "first_cpu_s": round(first[1], 3),
      "best_wall_s": round(min(r[0] for r in rest), 3),
      "best_cpu_s": round(min(r[1] for r in rest), 3),
      "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
  }
  print(f"imports {imports_s:.2f}s; first load {first[0]:.2f}s wall / {first[1]:.2f}s CPU;"
        f" best of 4 more {result['best_wall_s']:.2f}s wall / {result['best_cpu_s']:.2f}s CPU;"
        f" load average {result['load_average']} on {result['cpus']} CPUs")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
