#!/usr/bin/env bash
# The four cheap experiments that test the learning diagnosis (issue "Learning that shows",
# part 1). Each stage writes into OUT/<name>/ and is skipped when its DONE marker exists, so
# a rerun continues where the last one stopped. Run on a quiet machine (about 40 minutes on
# 2 CPU cores), never beside the tests:
#
#   experiments/diagnosis/run.sh [OUT]        # default OUT=runs/diagnosis
#   python experiments/diagnosis/summarize.py OUT
#
# F1  demo, overlong term off, token-mean loss: does the length still halve?
# F2  demo, Dr. GRPO advantages only: does the reward rise?
# F3  base model on the arithmetic problems, 4 samples at T = 1.0, 0.7 and 0.5, and greedy:
#     is sampled accuracy at 0.7 at least half the greedy accuracy?
# F4  20 steps on the arithmetic problems: T = 0.7, G = 8, no overlong term, RLOO, softer
#     gates, LoRA rank 16 at lr 1e-4: does the reward rise, the update norm above noise?
# The demo runs (F1, F2) skip the before/after evaluation: their questions are answered by
# metrics.jsonl.
set -euo pipefail
OUT=${1:-runs/diagnosis}
PY=${PY:-python}
DATA=$OUT/arith_data
mkdir -p "$OUT"

stage() {  # stage NAME COMMAND...: runs COMMAND unless OUT/NAME/DONE exists
  local name=$1; shift
  if [[ -e "$OUT/$name/DONE" ]]; then echo "[diagnosis] $name: done, skipped"; return; fi
  rm -rf "$OUT/$name"; mkdir -p "$OUT/$name"
  echo "[diagnosis] $name: $*"
  local t0; t0=$(date +%s)
  "$@" > "$OUT/$name/log.txt" 2>&1
  echo "$(( $(date +%s) - t0 ))" > "$OUT/$name/DONE"
  echo "[diagnosis] $name: $(cat "$OUT/$name/DONE") s"
}

[[ -e "$DATA/test.jsonl" ]] || $PY -m pbrl_jax.data.arith --out "$DATA"

stage F3_t10 $PY -m pbrl_jax.cli.eval_main --config "configs/miniature.py:rlvr_grpo,data_dir=$DATA" \
  --workdir "$OUT/F3_t10" --base --name=t10 --config.eval.num_samples=4 \
  --config.eval.temperature=1.0
stage F3_t07 $PY -m pbrl_jax.cli.eval_main --config "configs/miniature.py:rlvr_grpo,data_dir=$DATA" \
  --workdir "$OUT/F3_t07" --base --name=t07 --config.eval.num_samples=4 \
  --config.eval.temperature=0.7
# Added after F3: the same at T = 0.5, one step further down the temperature sweep.
stage F3_t05 $PY -m pbrl_jax.cli.eval_main --config "configs/miniature.py:rlvr_grpo,data_dir=$DATA" \
  --workdir "$OUT/F3_t05" --base --name=t05 --config.eval.num_samples=4 \
  --config.eval.temperature=0.5
stage F3_greedy $PY -m pbrl_jax.cli.eval_main --config "configs/miniature.py:rlvr_grpo,data_dir=$DATA" \
  --workdir "$OUT/F3_greedy" --base --name=greedy
stage F1 $PY -m pbrl_jax.demo --workdir "$OUT/F1" --config.eval_before_after=false \
  --config.rl.overlong_buffer=0 --config.rl.loss_aggregation=token_mean
stage F2 $PY -m pbrl_jax.demo --workdir "$OUT/F2" --config.eval_before_after=false \
  --config.rl.advantage=dr_grpo
f4() {
  $PY -m pbrl_jax.cli.pivot_main --config "configs/miniature.py:pbrl_hybrid,data_dir=$DATA" \
    --workdir "$OUT/F4" --references "$DATA/train_references.jsonl"
  $PY -m pbrl_jax.cli.train_main --config "configs/miniature.py:pbrl_hybrid,data_dir=$DATA" \
    --workdir "$OUT/F4" --config.total_steps=20 --config.rollout.temperature=0.7 \
    --config.data.global_batch_size=2 --config.data.group_size=8 \
    --config.rl.overlong_buffer=0 --config.rl.advantage=rloo \
    --config.rl.loss_aggregation=token_mean --config.reward.alpha=0.7 \
    --config.reward.guards.language_weight=0.75 --config.reward.guards.length_lo=0.1 \
    --config.model.lora_rank=16 --config.optim.learning_rate=1e-4
}
stage F4 f4
echo "[diagnosis] all stages done; python experiments/diagnosis/summarize.py $OUT"
