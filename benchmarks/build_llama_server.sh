#!/usr/bin/env bash
# Build llama.cpp's own llama-server from the source vendored in the llama-cpp-python sdist the
# Makefile installs (same version, same CPU flags), for bench_serve.py's anchor row only: it is
# never a dependency of guardrail. Prints the binary's path. Takes several minutes once.
set -euo pipefail
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
ROOT="${GUARDRAIL_CACHE:-$HOME/.cache/guardrail}/llama-server-$VERSION"
BIN="$ROOT/build/bin/llama-server"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$ROOT"
PY="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
"$PY" -m pip download -q --no-binary :all: --no-deps -d "$ROOT" "llama-cpp-python==$VERSION" >&2
tar xzf "$ROOT/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT"
SRC="$ROOT/llama_cpp_python-$VERSION/vendor/llama.cpp"
# shellcheck disable=SC2086
cmake -S "$SRC" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON $CMAKE_ARGS >&2
cmake --build "$ROOT/build" --target llama-server -j "$(nproc)" >&2
echo "$BIN"
