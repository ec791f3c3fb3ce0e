#!/usr/bin/env bash
# Builds the Python extension (C++ core + bindings) for aarch64 with the Debian cross
# compiler and runs the kernel tests (tests/test_matmul.py, tests/test_kernel_targets.py,
# tests/test_head_formats.py: the int8 / q6 head kernels with SDOT and without; tests/test_quest_kernels.py) and
# the engine-on-every-target test (tests/test_engine_targets.py)
# on it under qemu-aarch64 (user mode), with Debian 12's arm64 python3.11 + numpy.
# Unlike tests/arm_cross_compile.sh (compile only), this runs the NEON kernels and the
# portable fallback and checks them against numpy.
#
#   tests/arm_qemu_tests.sh [extra pytest args]      (as root, or with sudo available)
#
# Needs: Debian 12 x86_64, Debian apt + PyPI reachable, and `make setup` run first (the
# venv's python supplies pybind11's CMake files and pip for downloading wheels).
# Installs when missing: qemu-user, g++-aarch64-linux-gnu, cmake, ninja-build. Adds the
# arm64 architecture to dpkg (for `apt-get download` only; no arm64 package is installed
# on the system). Everything else lives in $ARM_WORK (default /tmp/ternlm-arm64):
#   debs/ + sysroot/   arm64 .debs (`apt-get download`), unpacked with `dpkg -x`
#   wheels/ + pylib/   aarch64 wheels for pytest, hypothesis, tokenizers, unpacked
#   build/             the CMake build of _core for aarch64
#   logs/              apt / pip / cmake output (the tail is shown on failure)
# Idempotent: a second run reuses all of that and only rebuilds what changed.
# Nothing is written into the repository (no bytecode, no pytest or hypothesis caches).
# Env: ARM_WORK (work dir), ARM_JOBS (build parallelism, default 2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARM_WORK=${ARM_WORK:-/tmp/ternlm-arm64}
mkdir -p "$ARM_WORK"
ARM_WORK=$(cd "$ARM_WORK" && pwd)
JOBS=${ARM_JOBS:-2}
SYSROOT=$ARM_WORK/sysroot
LOGS=$ARM_WORK/logs
PY=$ROOT/.venv/bin/python
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$LOGS"

# arm64 packages unpacked into the sysroot: python3.11 (interpreter, stdlib, headers and
# libpython), numpy, Highway, and the shared libraries they load.
ARM_DEBS=(
  gcc-12-base libc6 libgcc-s1 libstdc++6 libgomp1 libgfortran5
  libhwy1 libhwy-dev
  python3.11 python3.11-minimal libpython3.11 libpython3.11-minimal libpython3.11-stdlib
  libpython3.11-dev
  python3-numpy libblas3 liblapack3
  libbz2-1.0 libcom-err2 libcrypt1 libdb5.3 libexpat1 libffi8 libgssapi-krb5-2
  libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 liblzma5 libncursesw6 libnsl2
  libreadline8 libsqlite3-0 libssl3 libtinfo6 libtirpc3 libuuid1 zlib1g
)
# aarch64 wheels (cp311), pinned and without dependency resolution: pytest, hypothesis,
# tokenizers (imported by tests/conftest.py's fixtures), jinja2 + markupsafe (ternlm's chat
# templates) and their pure-Python deps.
WHEELS=(
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.3 pygments==2.21.0
  hypothesis==6.170.15 sortedcontainers==2.4.0
  tokenizers==0.23.3 tqdm==4.70.1 jinja2==3.1.6 markupsafe==3.0.4
)
PY_EXT=.cpython-311-aarch64-linux-gnu.so   # Debian 12's python3.11

t0=$SECONDS
say() { printf '[arm-qemu %3ds] %s\n' "$((SECONDS - t0))" "$*"; }
# Exit status 3: the emulation environment could not be prepared (nothing was tested);
# otherwise pytest's status.
die() { echo "[arm-qemu] ERROR: $*" >&2; exit 3; }
# logged LOG CMD...: runs CMD with its output appended to $LOGS/LOG; on failure shows its tail.
logged() {
  local log=$LOGS/$1; shift
  echo "+ $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    echo "[arm-qemu] FAILED: $*  (last lines of $log:)" >&2
    tail -n 40 "$log" >&2
    exit 3
  fi
}
APT_UPDATED=0
apt_update() { [ $APT_UPDATED = 1 ] || { say "apt-get update"; logged apt.log $SUDO apt-get update; APT_UPDATED=1; }; }
apt_install() { apt_update; say "apt-get install $*"; logged apt.log $SUDO apt-get install -y --no-install-recommends "$@"; }

# --- 1. host tools -----------------------------------------------------------------------
[ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] || die "expects a Debian amd64 host"
missing=()
command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v cmake >/dev/null || missing+=(cmake)
command -v ninja >/dev/null || missing+=(ninja-build)
[ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
if command -v qemu-aarch64 >/dev/null; then QEMU=qemu-aarch64
else
  command -v qemu-aarch64-static >/dev/null || apt_install qemu-user-static
  QEMU=qemu-aarch64-static
fi
[ -x "$PY" ] || die "$PY not found: run 'make setup' in $ROOT first"
PYBIND11_DIR=$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())' 2>/dev/null) ||
  die "pybind11 is not installed in $ROOT/.venv: run 'make setup' in $ROOT first"
say "host tools: $QEMU, $(aarch64-linux-gnu-g++ -dumpfullversion) (aarch64-linux-gnu-g++), cmake $(cmake --version | sed -n '1s/.* //p')"

# --- 2. arm64 sysroot --------------------------------------------------------------------
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  say "dpkg --add-architecture arm64"
  $SUDO dpkg --add-architecture arm64
  APT_UPDATED=0; apt_update
elif ! apt-cache show libc6:arm64 >/dev/null 2>&1; then
  apt_update   # arm64 added but its package lists never fetched
fi
mkdir -p "$ARM_WORK/debs"
need=()
for p in "${ARM_DEBS[@]}"; do
  compgen -G "$ARM_WORK/debs/${p}_*_arm64.deb" >/dev/null || need+=("$p:arm64")
done
if [ ${#need[@]} != 0 ]; then
  say "apt-get download ${#need[@]} arm64 packages"
  (cd "$ARM_WORK/debs" && logged apt-download.log apt-get download "${need[@]}")
fi
debs=()
for p in "${ARM_DEBS[@]}"; do
  f=$(compgen -G "$ARM_WORK/debs/${p}_*_arm64.deb" | sort -V | tail -n 1) || die "no .deb for $p:arm64"
  debs+=("$f")
done
stamp=$(printf '%s\n' "${debs[@]##*/}")
if [ "$(cat "$SYSROOT/.ternlm-stamp" 2>/dev/null)" != "$stamp" ]; then
  say "unpacking ${#debs[@]} .debs into $SYSROOT"
  rm -rf "$SYSROOT"; mkdir -p "$SYSROOT"
  for f in "${debs[@]}"; do logged sysroot.log dpkg -x "$f" "$SYSROOT"; done
  # What update-alternatives would do for libblas3/liblapack3 (numpy links libblas.so.3).
  ln -sfn blas/libblas.so.3 "$SYSROOT/usr/lib/aarch64-linux-gnu/libblas.so.3"
  ln -sfn lapack/liblapack.so.3 "$SYSROOT/usr/lib/aarch64-linux-gnu/liblapack.so.3"
  printf '%s\n' "$stamp" >"$SYSROOT/.ternlm-stamp"
else
  say "sysroot up to date ($SYSROOT)"
fi
[ -x "$SYSROOT/usr/bin/python3.11" ] || die "no python3.11 in $SYSROOT"

# --- 3. aarch64 wheels -------------------------------------------------------------------
PYLIB=$ARM_WORK/pylib
stamp=$(printf '%s\n' "${WHEELS[@]}")
if [ "$(cat "$PYLIB/.ternlm-stamp" 2>/dev/null)" != "$stamp" ]; then
  say "pip download ${#WHEELS[@]} aarch64 wheels"
  rm -rf "$ARM_WORK/wheels" "$PYLIB"; mkdir -p "$ARM_WORK/wheels" "$PYLIB"
  logged pip.log "$PY" -m pip download --disable-pip-version-check --no-deps \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 \
    --abi none --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
    --platform any -d "$ARM_WORK/wheels" "${WHEELS[@]}"
  for w in "$ARM_WORK"/wheels/*.whl; do logged pip.log "$PY" -m zipfile -e "$w" "$PYLIB"; done
  printf '%s\n' "$stamp" >"$PYLIB/.ternlm-stamp"
else
  say "wheels up to date ($PYLIB)"
fi

# --- 4. build ----------------------------------------------------------------------------
TOOLCHAIN=$ARM_WORK/aarch64-toolchain.cmake
cat >"$TOOLCHAIN.new" <<EOF
# Written by tests/arm_qemu_tests.sh: Debian's aarch64-linux-gnu cross compiler, with the
# arm64 .debs unpacked (dpkg -x) into $SYSROOT.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(ARM_SYSROOT $SYSROOT)
set(CMAKE_FIND_ROOT_PATH \${ARM_SYSROOT} /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# try_run / test binaries run under qemu
set(CMAKE_CROSSCOMPILING_EMULATOR $QEMU;-L;\${ARM_SYSROOT})
# libhwy.so's own dependencies (libstdc++ etc.) are resolved from the sysroot at link time
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-Wl,-rpath-link,\${ARM_SYSROOT}/usr/lib/aarch64-linux-gnu -Wl,-rpath-link,\${ARM_SYSROOT}/lib/aarch64-linux-gnu")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "-Wl,-rpath-link,\${ARM_SYSROOT}/usr/lib/aarch64-linux-gnu -Wl,-rpath-link,\${ARM_SYSROOT}/lib/aarch64-linux-gnu")
EOF
BUILD=$ARM_WORK/build
if cmp -s "$TOOLCHAIN.new" "$TOOLCHAIN"; then rm "$TOOLCHAIN.new"
else mv "$TOOLCHAIN.new" "$TOOLCHAIN"; rm -rf "$BUILD"; fi   # a new toolchain needs a fresh cache
# The build is of one source tree: another checkout (a CI clone) configures its own.
grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT" "$BUILD/CMakeCache.txt" 2>/dev/null || rm -rf "$BUILD"
if [ ! -f "$BUILD/build.ninja" ]; then
  say "cmake configure ($BUILD)"
  rm -rf "$BUILD"
  logged cmake.log cmake -S "$ROOT" -B "$BUILD" -G Ninja \
    -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" -DCMAKE_BUILD_TYPE=Release \
    -DTERNLM_BUILD_PYTHON=ON -DTERNLM_BUILD_BENCHMARKS=OFF \
    -Dhwy_DIR="$SYSROOT/usr/lib/aarch64-linux-gnu/cmake/hwy" \
    -Dpybind11_DIR="$PYBIND11_DIR" -DPYBIND11_FINDPYTHON=ON -DPYBIND11_USE_CROSSCOMPILING=ON \
    -DPython_INCLUDE_DIR="$SYSROOT/usr/include/python3.11" \
    -DPYTHON_MODULE_EXTENSION="$PY_EXT" -DPYTHON_IS_DEBUG=0 -DPYTHON_MODULE_DEBUG_POSTFIX=
fi
say "build (-j$JOBS)"
logged build.log cmake --build "$BUILD" -j "$JOBS"
[ -f "$BUILD/_core$PY_EXT" ] || die "build produced no $BUILD/_core$PY_EXT"

# --- 5. tests under qemu -----------------------------------------------------------------
export TERNLM_CORE_DIR=$BUILD
export PYTHONPATH=$ROOT/python:$PYLIB
export PYTHONDONTWRITEBYTECODE=1                 # no __pycache__ in the repository
export HYPOTHESIS_STORAGE_DIRECTORY=$ARM_WORK/hypothesis
export TOKENIZERS_PARALLELISM=false
ARMPY=("$QEMU" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11")
cd "$ROOT"
say "Highway targets under qemu: $("${ARMPY[@]}" -c 'from ternlm import _core; print(", ".join(_core.supported_targets()))')"
say "pytest tests/test_matmul.py tests/test_kernel_targets.py tests/test_quest_kernels.py tests/test_engine_targets.py tests/test_head_formats.py (under $QEMU)"
rc=0
# test_models_with_small_heads writes its models with torch, which this environment lacks
"${ARMPY[@]}" -m pytest -p no:cacheprovider --rootdir="$ROOT" \
  tests/test_matmul.py tests/test_kernel_targets.py tests/test_quest_kernels.py tests/test_engine_targets.py tests/test_head_formats.py \
  --deselect tests/test_head_formats.py::test_models_with_small_heads "$@" || rc=$?
say "done (pytest exit status $rc)"
exit $rc
