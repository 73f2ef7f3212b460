#!/usr/bin/env bash
# Runs every benchmark on a quiet machine and writes JSON under benchmarks/results/.
# Each script measures its own baseline in the same run and prints a table.
#   bash benchmarks/run_all.sh            # everything (about 30 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p benchmarks/results
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
"$PY" benchmarks/sampler.py --out benchmarks/results/sampler.json
"$PY" benchmarks/decode_floor.py --out benchmarks/results/decode_floor.json
"$PY" benchmarks/update_step.py --weights gguf --out benchmarks/results/update_step.json
"$PY" benchmarks/reward.py --output benchmarks/results/reward.json
"$PY" benchmarks/pipeline.py --output benchmarks/results/pipeline.json
"$PY" benchmarks/compare_trl.py --steps 4 --out benchmarks/results/compare
