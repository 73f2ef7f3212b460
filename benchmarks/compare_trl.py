"""GRPO against TRL 1.16: step parity, training curves and speed (the `pbrl-compare` CLI).

  python benchmarks/compare_trl.py --out /tmp/compare_smollm2 --steps 10
  python benchmarks/compare_trl.py --out /tmp/compare_smollm2_bf16 --steps 10 --trl_bf16
  python benchmarks/compare_trl.py --quick --out /tmp/compare_quick

Run it on an otherwise idle machine: both sides share the CPU cores and the timings are
relative to each other. Prints the report (preset, parity, curves, speed) and writes
OUT/results.json, OUT/report.md and OUT/curves.png. All flags: `--helpfull`.
"""

from pbrl_jax.cli import compare_main

if __name__ == "__main__":
  compare_main.run()
