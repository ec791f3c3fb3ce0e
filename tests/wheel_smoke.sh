#!/usr/bin/env bash
# The wheel as a user gets it (make test-wheel; CI runs it after the test suite):
#  1. copy the source tree (git's tracked + untracked, unignored files) and make the copy
#     read-only: a private mount namespace with a read-only bind mount when root (root
#     ignores permission bits), chmod a-w otherwise; then `make wheel WHEEL_SRC=<copy>`,
#     which must not write into it (pyproject.toml sets no build-dir);
#  2. install dist/ternlm-*.whl into a fresh venv (dependencies from the package index);
#  3. in another private mount namespace, bind /dev/null over every system libhwy file, so
#     that only the copy auditwheel bundled can load, and run tests/wheel_smoke.py from a
#     folder outside the tree (it fails if the system libhwy is loadable or mapped).
# Needs util-linux's unshare and mount (root, or unprivileged user namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PY="$ROOT/$VENV/bin/python"
[ -x "$PY" ] || { echo "wheel_smoke.sh: $PY is missing; run it through 'make test-wheel'" >&2; exit 2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ternlm-wheel.XXXXXX")
cleanup() { chmod -R u+w "$TMP" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

if [ "$(id -u)" = 0 ]; then NS=(unshare --mount --propagation private); else NS=(unshare --user --map-root-user --mount --propagation private); fi

# ---- 1. build from a read-only copy
mkdir "$TMP/src"
git ls-files -z --cached --others --exclude-standard \
  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$TMP/src"
chmod -R a-w "$TMP/src"
echo "== building the wheel from a read-only copy of the tree ($TMP/src)"
"${NS[@]}" bash -euo pipefail -c '
  src=$1; shift
  mount --bind "$src" "$src" && mount -o remount,bind,ro "$src"
  if touch "$src/.write-probe" 2>/dev/null; then echo "the copy is still writable" >&2; exit 1; fi
  make wheel WHEEL_SRC="$src" VENV="$0"' "$VENV" "$TMP/src"
shopt -s nullglob
wheels=(dist/ternlm-*manylinux*.whl)
[ "${#wheels[@]}" = 1 ] || { echo "wheel_smoke.sh: expected one manylinux wheel in dist/, found: ${wheels[*]:-none}" >&2; exit 1; }
WHEEL=$ROOT/${wheels[0]}
"$ROOT/$VENV/bin/auditwheel" show "$WHEEL"

# ---- 2. a fresh venv with the wheel (the same interpreter the wheel was built for)
BASE_PY=$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
"$BASE_PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q "$WHEEL"

# ---- 3. hide the system libhwy and run the smoke test
hwy_files=$( { ldconfig -p 2>/dev/null | awk '/libhwy/ {print $NF}';
               ls /usr/lib/libhwy*.so* /usr/lib/*/libhwy*.so* /usr/local/lib/libhwy*.so* \
                  /usr/local/lib/*/libhwy*.so* /usr/lib64/libhwy*.so* 2>/dev/null; } \
             | while read -r f; do [ -e "$f" ] && realpath "$f"; done | sort -u)
echo "== hiding the system libhwy:" $hwy_files
cp tests/wheel_smoke.py "$TMP/"
cd "$TMP"
"${NS[@]}" env -u PYTHONPATH -u TERNLM_CORE_DIR bash -euo pipefail -c '
  for f in $1; do mount --bind /dev/null "$f"; done
  exec "$0/venv/bin/python" "$0/wheel_smoke.py" --system-libhwy-hidden' "$TMP" "$hwy_files"
