#!/usr/bin/env bash
# GPU checks and benchmarks, for a CUDA machine with torch and the package installed.
# Usage: benchmarks/gpu_checks.sh MODEL_DIR [MODEL_DIR...]
#   Each MODEL_DIR is a transformers model directory with its tokenizer (random weights are fine
#   for timing: see benchmarks/random_model.py). The first also serves the GPU tests.
# On a machine with torch and transformers but no network and no install of this package:
#   python3 -m pip install --no-deps pydantic*.whl ...   (wheels of the missing dependencies)
#   ln -sfn ../adapters guardrail/adapters; export PYTHONPATH=$PWD
#   python3 benchmarks/random_model.py CONFIG_DIR TOKENIZER_DIR /tmp/m float32
#   GUARDRAIL_GPU_TEST_MODEL=/tmp/m python3 -m pytest -m gpu tests -q
set -euo pipefail
cd "$(dirname "$0")/.."
GUARDRAIL_GPU_TEST_MODEL="$1" python3 -m pytest -m gpu tests -q -p no:cacheprovider
for m in "$@"; do
  python3 benchmarks/bench_adacd.py --backend transformers --device cuda --dtype bfloat16 \
    --model "$m" --tokens 128 --repeats 3 --json "${OUT:-/tmp}/bench_$(basename "$m").json" || true
done
