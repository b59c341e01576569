#!/usr/bin/env bash
# GPU checks and benchmarks, for a CUDA machine with torch and the package installed.
# Usage: benchmarks/gpu_checks.sh MODEL_DIR [MODEL_DIR...]
#   Each MODEL_DIR is a transformers model directory with its tokenizer (random weights are fine
#   for timing: see benchmarks/random_model.py). The first also serves the GPU tests.
set -euo pipefail
cd "$(dirname "$0")/.."
GUARDRAIL_GPU_TEST_MODEL="$1" python3 -m pytest -m gpu tests -q -p no:cacheprovider
for m in "$@"; do
  python3 benchmarks/bench_adacd.py --backend transformers --device cuda --dtype bfloat16 \
    --model "$m" --tokens 128 --repeats 3 --json "${OUT:-/tmp}/bench_$(basename "$m").json" || true
done
