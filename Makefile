# The two set-up commands of the README. Each builds the virtual environment it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export JAX_PLATFORMS ?= cpu

.PHONY: demo test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: setup.py | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: setup.py $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps cd-fvd==0.1.1  # the I3D reference; see setup.py
	touch $@

# 1. The whole demo: synthetic world -> tokenizer -> tiny VAE -> latents -> tiny DiT -> samples (CPU).
demo: $(VENV)/.installed
	PATH="$(abspath $(VENV))/bin:$$PATH" bash launch/demo.sh

# 2. The test suite (CPU; 8 simulated devices for the sharded tests).
test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests
