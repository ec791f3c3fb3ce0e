# ternlm: the two commands a fresh Debian machine needs.
#   make demo   set up, then generate text with the default model
#   make test   set up (with test extras), then run the whole test suite
#   make fuzz   the loaders' mutation fuzzer for FUZZ_SECONDS (tests/fuzz_loaders.py)
#   make test-sanitize  the C++ core built with ASan + UBSan, every test that needs no torch under it
#   make test-ray   the extra ternlm[ray] (Ray Serve + Ray Data) and its tests on a local 2-node Ray
# and for packaging:
#   make wheel       a manylinux wheel in dist/ that bundles libhwy (auditwheel repair)
#   make test-wheel  that wheel built from a read-only copy of the tree, installed into a
#                    fresh venv and smoke-tested with the system libhwy hidden
# All are idempotent: apt packages and the venv are only installed when missing,
# and the editable build is incremental.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := libhwy-dev libbenchmark-dev cmake ninja-build g++ python3-venv python3-dev
DEMO_PROMPT ?= Explain in two sentences why the sky is blue.

# The editable build keeps its CMake folder (pyproject.toml sets none, so that wheels build
# in a temporary folder and a read-only source tree builds too): rebuilds stay incremental.
EDITABLE_BUILD_DIR := --config-settings=build-dir=build/{wheel_tag}

.PHONY: demo test test-ray fuzz test-sanitize setup setup-test apt build bench clean check-arm test-arm wheel test-wheel

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y $$missing; fi

$(VENV)/.created: | apt
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "scikit-build-core>=0.10" "pybind11>=2.12" ninja cmake
	touch $@

# torch==2.13.0 first: it is the CPU build (any other version pulls a CUDA build). The server
# extra (FastAPI + uvicorn) too: tests/test_server.py drives `ternlm serve` with the openai client.
$(VENV)/.test-deps: $(VENV)/.created pyproject.toml
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test,server]" --no-build-isolation $(EDITABLE_BUILD_DIR)
	touch $@

build: $(VENV)/.created
	$(PIP) install -e . --no-build-isolation $(EDITABLE_BUILD_DIR)

setup: apt build

setup-test: apt $(VENV)/.test-deps build

demo: setup
	$(VENV)/bin/ternlm generate --prompt "$(DEMO_PROMPT)" --max-new-tokens 96

test: setup-test
	$(PY) -m pytest -q tests --ignore=tests/test_ray.py

# ternlm on Ray, kept out of `make test`: the extra is large (Ray ~80 MB, pyarrow, pandas) and
# its tests start a Ray cluster (a head and one more node on 127.0.0.1, torn down at the end).
$(VENV)/.ray-deps: $(VENV)/.test-deps pyproject.toml
	$(PIP) install -e ".[test,server,ray]" --no-build-isolation $(EDITABLE_BUILD_DIR)
	touch $@

test-ray: apt $(VENV)/.ray-deps build
	$(PY) -m pytest -q tests/test_ray.py

# Seeded mutation fuzzing of every loader, each input loaded in a forked child under a memory
# cap and a timeout: a crash, a hang, a sanitizer report, a MemoryError or an exception other
# than ValueError / FileNotFoundError fails it and prints the input (tests/BAD_INPUTS.md has
# the policy; tests/fuzz_known.txt the defects not fixed yet). Failing inputs are saved in
# build/fuzz. FUZZ_SANITIZE=1 runs it against the sanitizer build (SANITIZE_RUN, below), as
# CI does; FUZZ_ARGS adds options (tests/fuzz_loaders.py --help).
FUZZ_SECONDS ?= 180
FUZZ_SEED ?= 1
FUZZ_SANITIZE ?= 0
FUZZ_ARGS ?=
fuzz: setup-test
	$(if $(filter 1,$(FUZZ_SANITIZE)),$(SANITIZE_RUN)) $(abspath $(PY)) tests/fuzz_loaders.py --seconds $(FUZZ_SECONDS) \
	  --seed $(FUZZ_SEED) --known tests/fuzz_known.txt --out build/fuzz $(FUZZ_ARGS)

# The sanitizer build: tests/sanitize_env.sh builds the core and the module with ASan +
# UBSan in build/sanitize (every report aborts; no suppressions) and runs a command against
# it. SANITIZE_RUN prefixes any command with it (e.g. the loader fuzzer:
# `$(SANITIZE_RUN) $(PY) tests/fuzz_loaders.py`). test-sanitize runs the test suite there:
# tests that need torch skip themselves (tests/conftest.py), the notebooks are left out
# (two minutes under ASan, mostly plotting) and so are the Ray tests (Ray's own processes would
# load the instrumented module), and --capture=sys leaves file descriptor 2
# alone so a sanitizer report reaches the log even when it kills the process.
SANITIZE_RUN := PYTHON=$(abspath $(PY)) tests/sanitize_env.sh
SANITIZE_TESTS ?= tests --ignore=tests/test_notebooks.py --ignore=tests/test_ray.py
test-sanitize: setup-test
	$(SANITIZE_RUN) $(abspath $(PY)) -m pytest -q --capture=sys $(SANITIZE_TESTS)

# auditwheel (with patchelf) copies libhwy into the wheel (ternlm.libs/) and retags it
# manylinux: `import ternlm` then needs no system Highway. auditwheel picks the oldest
# manylinux tag the extension's symbol versions allow (`auditwheel show` names it): built on
# Debian 12, GCC 12's libstdc++ (GLIBCXX_3.4.30) makes that manylinux_2_35; an older tag
# needs an older toolchain (a manylinux image). WHEEL_SRC: the source tree to build.
WHEEL_SRC ?= .
$(VENV)/.wheel-tools: $(VENV)/.created
	$(PIP) install "auditwheel>=6.1" "patchelf>=0.17"
	touch $@

wheel: $(VENV)/.wheel-tools
	rm -rf build/wheel-raw && mkdir -p dist && rm -f dist/ternlm-*.whl
	$(PIP) wheel "$(WHEEL_SRC)" --no-deps --no-build-isolation -w build/wheel-raw
	$(VENV)/bin/auditwheel show build/wheel-raw/ternlm-*.whl
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair -w dist build/wheel-raw/ternlm-*.whl
	@ls -l dist/ternlm-*.whl

test-wheel: $(VENV)/.wheel-tools
	tests/wheel_smoke.sh

# The C++ core cross-compiled for aarch64 (compile only): CI's check that ARM still builds.
check-arm: apt
	@dpkg -s g++-aarch64-linux-gnu >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y g++-aarch64-linux-gnu; }
	tests/arm_cross_compile.sh

# The kernel tests on an aarch64 build of the extension, under qemu-user (NEON and the
# scalar fallback against numpy); downloads arm64 Debian packages and wheels to /tmp.
test-arm: setup
	tests/arm_qemu_tests.sh

bench: setup
	cmake -S . -B build/bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DTERNLM_BUILD_BENCHMARKS=ON -DTERNLM_BUILD_PYTHON=OFF
	cmake --build build/bench
	./build/bench/ternlm_bench --benchmark_counters_tabular=true

clean:
	rm -rf build
