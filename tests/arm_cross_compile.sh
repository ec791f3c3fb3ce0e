#!/usr/bin/env bash
# Compiles the C++ core (cpp/, without the Python bindings) for aarch64 with the Debian
# cross compiler, with the Highway definitions CMakeLists.txt sets, and checks that the
# NEON kernels and the scalar fallback were built. CI runs on x86, so this is what catches
# an ARM build breaking (e.g. arrays of vectors, which SVE's sizeless types forbid).
# Compile only; tests/arm_qemu_tests.sh runs the kernel tests under emulation.
#   make check-arm        (installs g++-aarch64-linux-gnu when missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cxx=aarch64-linux-gnu-g++
command -v "$cxx" >/dev/null || { echo "$cxx not found (apt-get install g++-aarch64-linux-gnu)"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Highway's headers alone, so the cross compiler does not see the host's /usr/include.
mkdir -p "$work/include" "$work/obj"
cp -r /usr/include/hwy "$work/include/"
# The definitions of ternlm_core, read from CMakeLists.txt.
# (all of them, the aarch64-only ones included)
defs=$(sed -n '/target_compile_definitions(ternlm_core/,/)$/p' "$root/CMakeLists.txt" |
       grep -o 'HWY_[A-Z0-9_]*\(=[^ )"]*\(([^)]*)\)\?\)\?' | sed 's/^/-D/')
[ -n "$defs" ] || { echo "no compile definitions found in CMakeLists.txt"; exit 1; }
echo "aarch64 compile flags:" $defs
sources=$(cd "$root" && ls cpp/formats/*.cc cpp/kernels/*.cc cpp/model/*.cc cpp/runtime/*.cc)
status=0
for f in $sources; do
  o="$work/obj/$(echo "$f" | tr / _).o"
  # shellcheck disable=SC2086
  if ! $cxx -std=c++17 -O1 -Wall -Wno-unused-function $defs -I"$work/include" -I"$root/cpp" \
         -c "$root/$f" -o "$o" 2>"$o.log"; then
    echo "FAILED: $f"; grep -m 10 "error" "$o.log" || true; status=1
  else
    echo "ok: $f"
  fi
done
[ $status = 0 ] || exit 1
for f in cpp/kernels/matmul.cc cpp/kernels/vector_ops.cc cpp/kernels/attention.cc; do
  o="$work/obj/$(echo "$f" | tr / _).o"
  n=$(aarch64-linux-gnu-nm -C "$o" | grep -c "N_NEON::" || true)
  m=$(aarch64-linux-gnu-nm -C "$o" | grep -c "N_SCALAR::\|N_EMU128::" || true)
  [ "$n" -gt 0 ] || { echo "no NEON kernels in $f"; exit 1; }
  [ "$m" -gt 0 ] || { echo "no scalar fallback kernels in $f"; exit 1; }
  echo "$f: $n NEON symbols, $m scalar-fallback symbols"
done
o="$work/obj/cpp_kernels_dotprod_aarch64.cc.o"
for k in TernaryTileDotsDotProd Int4TileBlockDotsDotProd Int8TileBlockDotsDotProd Q6SubDotsDotProd; do
  aarch64-linux-gnu-nm -C "$o" | grep -q "T ternlm::$k" || { echo "no $k (vdotq_s32) in dotprod_aarch64.cc"; exit 1; }
done
echo "cpp/kernels/dotprod_aarch64.cc: the vdotq_s32 ternary, INT4, int8 and q6 kernels are built"
echo "aarch64 (NEON) build of the core: ok"
