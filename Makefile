# `make repro` and `make test` do all set-up themselves: a fresh clone needs nothing else.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Triton Inference Server (nvidia-pytriton's build) in an environment of its own: it pins numpy<2
TRITON_VENV  ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro test lint format clean

install: $(STAMP) $(TRITON_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# serve/triton.py relies on this wheel's layout (its stubs and libraries); bump it with care
$(TRITON_STAMP):
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "onnxruntime>=1.20,<2"
	touch $(TRITON_STAMP)

repro: install
	$(BIN)/dvc repro

# two workers, a test file each at a time: the end-to-end DVC run beside the unit tests
test: install lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf data/prepared models metrics plots dvclive checkpoints
