#!/bin/bash
# Thread scaling of ternlm on a many-core machine without network (the lent "device"
# machine): build the core there, write the random 2B-4T BitNet model there, run
# vs_llamacpp.py for ternlm alone at 1..16 threads. Output (build log, table, JSON) goes
# to $OUT (default ./scaling-out).
#
# Needs in the working tree, prepared on a machine with Debian's libhwy-dev and the venv:
#   build/bench-device/hwy/   Highway 1.0.3 headers, libhwy*.so* and its CMake package
#                             (a prefix: include/, lib/x86_64-linux-gnu/{*.so*,cmake/hwy})
#   build/bench-device/gguf/  the pure-Python gguf package (imported by the harness)
# Usage: benchmarks/device_scaling.sh [threads, default 1,2,4,8,16] [reps, default 2] [variants]
set -euo pipefail
THREADS=${1:-1,2,4,8,16}
REPS=${2:-2}
VARIANTS=${3:-ternary,ternary-int4head}
OUT=${OUT:-$PWD/scaling-out}
mkdir -p "$OUT"
DEV=$PWD/build/bench-device
PY=$(command -v python3)
BUILD=/tmp/ternlm-bench-build
{
  nproc; lscpu | grep -E 'Model name|Thread|Core|Socket|NUMA|L3|Flags' | cut -c1-400
  free -g
} > "$OUT/machine.txt" 2>&1
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$PY" \
  -Dhwy_DIR="$DEV/hwy/lib/x86_64-linux-gnu/cmake/hwy" > "$OUT/build.log" 2>&1
cmake --build "$BUILD" -j"$(nproc)" >> "$OUT/build.log" 2>&1
export LD_LIBRARY_PATH="$DEV/hwy/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TERNLM_CORE_DIR="$BUILD" PYTHONPATH="$PWD/python:$DEV" PYTHONUNBUFFERED=1 TERNLM_HOME=/tmp/ternlm-home
"$PY" benchmarks/vs_llamacpp.py --engines ternlm --models bitnet --threads "$THREADS" --reps "$REPS" \
  --ternlm-formats "$VARIANTS" --workdir /tmp/ternlm-bench-models --json "$OUT/scaling.json" 2>&1 | tee "$OUT/log.txt"
