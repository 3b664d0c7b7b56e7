#!/usr/bin/env bash
# Every benchmark, one after another, each appending its section to BENCHMARKS.md.
#
#     bash benchmarks/run_all.sh            # about 2 hours 15 minutes on a 2-core CPU
#
# Run it on an otherwise idle machine: the quality rows give each model the same wall time,
# and anything else running steals from whichever model is training at the time. Run
# directories go under runs/ (git-ignored); sampling, memory and minRNN quality reuse the
# 10- and 30-minute preset runs that quality.py trains.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
step() { echo; echo "=== $(date +%T) $*"; }

step "default charnn train (the quick start's run) and its scores"
$PY -m charnn train --out runs/default
$PY -m charnn eval runs/default --json
$PY -m charnn eval runs/default --protocol windows --json
step "the cells that remember: the default run and a run on Python source (4 minutes of training)"
$PY benchmarks/cells.py --shakespeare-run runs/default --markdown BENCHMARKS.md
step "training throughput vs a bare loop, MFU"
$PY benchmarks/train_speed.py
step "charnn score and the API's logprobs vs eval and a plain request"
$PY benchmarks/score_speed.py --run runs/default --write
step "serving 32 concurrent streams"
$PY benchmarks/serve_load.py --run runs/default --clients 32 --requests 200 --max-tokens 256 --write
step "against nanoGPT's CPU recipe"
$PY benchmarks/transformer_baseline.py
step "minGRU / minLSTM speed"
$PY benchmarks/minrnn_speed.py --rounds 3 --markdown BENCHMARKS.md
step "quality per budget: 1, 2, 3, 10 minutes"
$PY benchmarks/quality.py --only 1 2 3 10
R10=$(ls -d runs/bench/10min-* | tail -1)
step "sampling speed on the 10-minute LSTM 2x512"
$PY benchmarks/sample_speed.py --run "$R10"
step "peak memory"
$PY benchmarks/memory.py --preset cpu-10min
step "quality per budget: 30 minutes"
$PY benchmarks/quality.py --only 30
R30=$(ls -d runs/bench/30min-* | tail -1)
step "minGRU vs the LSTM presets at 30 and 10 minutes"
$PY benchmarks/minrnn_quality.py --budgets 1800 --baseline "--preset cpu-{minutes}min" --baseline-run "1800=$R30" \
    --candidates "--model mingru --layers 3 --hidden 384 --embed 384 --batching windows --dropout 0.2 --lr 4e-3" \
    --markdown BENCHMARKS.md
$PY benchmarks/minrnn_quality.py --budgets 600 --baseline "--preset cpu-{minutes}min" --baseline-run "600=$R10" \
    --candidates "--model mingru --layers 3 --hidden 384 --embed 384 --batching windows --dropout 0.1 --lr 4e-3" \
    --markdown BENCHMARKS.md
step "memory at scale: charnn prepare on a 2 GiB corpus"
$PY benchmarks/prepare_memory.py
step "done"
