#!/usr/bin/env bash
# Runs a command against the sanitizer build of the C++ core: the core and the Python module
# built with AddressSanitizer + UndefinedBehaviorSanitizer (CMake's TERNLM_SANITIZE=ON) in
# build/sanitize, configured and built here when missing or stale (incrementally).
#
#   tests/sanitize_env.sh PYTHON -m pytest -q tests/test_formats.py
#   tests/sanitize_env.sh PYTHON tests/fuzz_loaders.py ...
#
# PYTHON must be the interpreter the module is built for (PYTHON=... selects it for the
# build; default: the first word of the command). The command runs with:
#   TERNLM_CORE_DIR  build/sanitize (python/ternlm/_native.py imports _core from there)
#   PYTHONPATH       python/ (the ternlm package of this tree)
#   LD_PRELOAD       the ASan runtime, then libstdc++: CPython itself is not instrumented,
#                    ASan must be the first library loaded to intercept malloc, and its
#                    C++ exception interceptor needs libstdc++ present when it starts
#                    (else the first throw fails ASan's "real___cxa_throw" CHECK)
#   ASAN_OPTIONS     detect_leaks=0 (CPython keeps objects alive until exit by design);
#                    allocator_may_return_null=1 (a huge allocation fails the way it does
#                    in a normal build: bad_alloc / MemoryError, which the code handles,
#                    instead of ASan's abort on sizes it cannot serve)
#   UBSAN_OPTIONS    print_stacktrace=1
# Every report aborts the process (the build uses -fno-sanitize-recover=all): a test run
# passes only when the sanitizers found nothing. There are no suppressions.
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: tests/sanitize_env.sh COMMAND [ARGS...]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${TERNLM_SANITIZE_BUILD:-$ROOT/build/sanitize}"
PYTHON="$(command -v "${PYTHON:-$1}")"
case "$PYTHON" in /*) ;; *) PYTHON="$PWD/$PYTHON" ;; esac
CXX="${CXX:-c++}"

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTERNLM_SANITIZE=ON \
  -DPython_EXECUTABLE="$PYTHON" >/dev/null
cmake --build "$BUILD" >&2

ASAN_LIB="$("$CXX" -print-file-name=libasan.so)"
STDCXX_LIB="$("$CXX" -print-file-name=libstdc++.so)"
if [ ! -e "$ASAN_LIB" ] || [ ! -e "$STDCXX_LIB" ]; then
  echo "tests/sanitize_env.sh: $CXX has no libasan.so / libstdc++.so (Debian: the g++ package ships both)" >&2
  exit 2
fi
export TERNLM_CORE_DIR="$BUILD"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$ASAN_LIB $STDCXX_LIB${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export TERNLM_SANITIZE=1
exec "$@"
