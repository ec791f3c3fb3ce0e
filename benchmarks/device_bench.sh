#!/bin/bash
# vs_llamacpp.py on a bare many-core machine without network access.
#
#   benchmarks/device_bench.sh setup            build the ternlm core (and llama-cpp-python when
#                                               its source tarball is there) under /tmp
#   benchmarks/device_bench.sh run ARGS...      vs_llamacpp.py ARGS --workdir /tmp/... --json $OUT/result.json
#
# Thread scaling of ternlm:
#   benchmarks/device_bench.sh setup && benchmarks/device_bench.sh run --engines ternlm \
#       --models bitnet --threads 1,2,4,8,16 --reps 2 --ternlm-formats ternary,ternary-int4head
#
# Carried in build/bench-device/ (prepared on a Debian machine with libhwy-dev and the venv):
#   hwy/        Highway 1.0.3: include/, lib/x86_64-linux-gnu/{libhwy*.so*, cmake/hwy}
#   gguf/, diskcache/                     pure-Python packages the harness / llama_cpp import
#   llama-cpp-python-*-src.tar.gz         optional: PyPI's source, trimmed (no GPU backends, docs, models)
# LLAMA_CMAKE_ARGS overrides llama.cpp's CMake options (default -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF).
# On a 16-core Xeon with AMX, llama.cpp built natively there crashed (SIGSEGV) while loading
# a model, right after the vocabulary; cause not established.
# Output (machine.txt, build logs, log.txt, result.json) goes to $OUT (default ./device-out).
set -euo pipefail
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
DEV=$PWD/build/bench-device
PY=$(command -v python3)
BUILD=/tmp/ternlm-bench-build
SITE=/tmp/ternlm-bench-site
export LD_LIBRARY_PATH="$DEV/hwy/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TERNLM_CORE_DIR="$BUILD" PYTHONPATH="$PWD/python:$SITE:$DEV" PYTHONUNBUFFERED=1 TERNLM_HOME=/tmp/ternlm-home

case "${1:-}" in
setup)
  { nproc; lscpu | grep -E 'Model name|Thread|Core|Socket|NUMA|L2|L3'; lscpu | grep -o 'avx512[a-z_0-9]*\|amx[a-z_0-9]*\|avx_vnni' | sort -u | tr '\n' ' '; echo; free -g; } > "$OUT/machine.txt" 2>&1
  if [ ! -e "$BUILD"/_core*.so ]; then
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$PY" \
      -Dhwy_DIR="$DEV/hwy/lib/x86_64-linux-gnu/cmake/hwy" > "$OUT/build-ternlm.log" 2>&1
    cmake --build "$BUILD" -j"$(nproc)" >> "$OUT/build-ternlm.log" 2>&1
  fi
  SRC=$(ls "$DEV"/llama-cpp-python-*-src.tar.gz 2>/dev/null | head -1 || true)
  if [ -n "$SRC" ] && [ ! -d "$SITE/llama_cpp" ]; then
    rm -rf /tmp/lcp-src && mkdir -p /tmp/lcp-src && tar xzf "$SRC" -C /tmp/lcp-src
    CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$PY" -m pip install -v --no-build-isolation --no-deps --no-index --target "$SITE" /tmp/lcp-src/* \
      > "$OUT/build-llama-cpp.log" 2>&1
  fi
  "$PY" -c "import ternlm; print('ternlm', ternlm._core.current_target())"
  "$PY" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)" || echo "llama_cpp not available"
  ;;
run)
  shift
  "$PY" benchmarks/vs_llamacpp.py --workdir /tmp/ternlm-bench-models --json "$OUT/result.json" "$@" 2>&1 | tee "$OUT/log.txt"
  ;;
*)
  echo "usage: $0 setup | run ARGS..." >&2
  exit 2
  ;;
esac
