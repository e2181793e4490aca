# `make test` is the test command CI runs; `make demo` is the end-to-end CPU demo.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_ENABLE_ONEDNN_OPTS ?= 0

.PHONY: install libtpu test test-slow test-all demo bench-accelerator tpu-budget clean

install: $(STAMP)

# Recreated whenever the pins change. The pins are for CPython 3.11 on Linux
# (x86_64, aarch64) and macOS (arm64); another Python stops here at once.
$(STAMP): requirements.txt setup.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); the pinned requirements need 3.11. Install it (pyenv install 3.11, brew install python@3.11, apt install python3.11) and run make PYTHON=python3.11" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# libtpu (pinned in requirements-libtpu.txt), for compiling for a TPU without
# one: python -m mio_jax.cli.tpu_compile (docs/performance.md). Installed into
# .venv/libtpu, off the import path, so that nothing else changes: JAX tries a
# TPU backend at start-up in any process that can import libtpu.
libtpu: $(STAMP)
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/libtpu -r requirements-libtpu.txt

# Two pytest-xdist workers by default (the CI machine has 2 cores); each
# worker compiles on its own, so more cores take TEST_WORKERS=auto.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --durations=25 tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m mio_jax.cli.demo

# On a GPU or TPU host (after installing jax[cuda12] or jax[tpu]): self-check,
# train-step and input-pipeline benchmarks, MFU against the chip's peak, in
# one JSON; under 10 minutes.
bench-accelerator: $(STAMP)
	$(PY) benchmarks/accelerator.py --out=accelerator.json

# Compiles the guarded TPU steps (benchmarks/tpu_budget.json: the ImageNet-1K
# ResNet-50 and ViT-B/16 pretraining steps on a v4-8) with libtpu and fails
# when HBM bytes or peak memory per chip grow more than 2 % over the record.
tpu-budget: $(STAMP)
	$(PY) benchmarks/tpu_budget.py

clean:
	rm -rf $(VENV) runs .pytest_cache
