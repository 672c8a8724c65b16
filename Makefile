# Every target creates .venv on first use (idempotent) and runs inside it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TPU_STAMP := $(VENV)/.installed-tpu
WORKDIR ?= runs/demo
# Extra demo flags, e.g. make demo DEMO_ARGS='--stages=data,tokenizer --steps_scale=0.1'
DEMO_ARGS ?=
export JAX_PLATFORMS ?= cpu

.PHONY: venv demo play test lint format bench clean aot-table offline-wheels

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The tests also compile for compile-only TPU devices: they need the tpu extra (libtpu).
$(TPU_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,tpu]'
	touch $(TPU_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m dreamer4_jax.demo --workdir=$(WORKDIR) $(DEMO_ARGS)

play: $(STAMP)
	$(PY) -m dreamer4_jax.play --workdir=$(WORKDIR) $(PLAY_FLAGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: $(TPU_STAMP) lint
	$(PY) -m pytest -n 2 --durations=15 tests

bench: $(STAMP)
	$(PY) -m benchmarks.run --out=benchmarks/results/bench.json

# Paper-scale phases compiled ahead of time for v5p / v6e pods (README table; minutes each).
aot-table: $(TPU_STAMP)
	$(PY) -m benchmarks.aot_table

# Wheels of the packages the paper-scale GPU benchmark imports beyond JAX, Flax, optax and orbax,
# at this venv's versions, for a GPU machine with JAX but no network (launch/gpu_bench.sh
# installs them from wheels/). WHEEL_PYTHON: that machine's Python.
WHEEL_PYTHON ?= 3.12
OFFLINE_PACKAGES := grain|array.record|ml.collections|portpicker
offline-wheels: $(STAMP)
	rm -rf wheels.tmp && mkdir wheels.tmp
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(WHEEL_PYTHON) \
	    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux2014_x86_64 -d wheels.tmp \
	    $$($(PY) -m pip freeze | grep -i -E '^($(OFFLINE_PACKAGES))==')
	rm -rf wheels && mv wheels.tmp wheels
	ls wheels

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
