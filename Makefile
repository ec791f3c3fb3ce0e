# ternlm: the two commands a fresh Debian machine needs.
#   make demo   set up, then generate text with the default model
#   make test   set up (with test extras), then run the whole test suite
# Both are idempotent: apt packages and the venv are only installed when missing,
# and the editable build is incremental.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := libhwy-dev libbenchmark-dev cmake ninja-build g++ python3-venv python3-dev
DEMO_PROMPT ?= Explain in two sentences why the sky is blue.

.PHONY: demo test setup setup-test apt build bench clean check-arm test-arm

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y $$missing; fi

$(VENV)/.created: | apt
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "scikit-build-core>=0.10" "pybind11>=2.12" ninja cmake
	touch $@

# torch==2.13.0 first: it is the CPU build (any other version pulls a CUDA build).
$(VENV)/.test-deps: $(VENV)/.created pyproject.toml
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]" --no-build-isolation
	touch $@

build: $(VENV)/.created
	$(PIP) install -e . --no-build-isolation

setup: apt build

setup-test: apt $(VENV)/.test-deps build

demo: setup
	$(VENV)/bin/ternlm generate --prompt "$(DEMO_PROMPT)" --max-new-tokens 96

test: setup-test
	$(PY) -m pytest -q tests

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
