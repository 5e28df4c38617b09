# Two commands work on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv, install ldmonai with the torch pin (constraints.txt), then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ldmonai-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} was installed, expected 2.13.0')"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ldmonai demo --out-dir demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/convert.py
	$(BIN)/python benchmarks/ldseg.py --dims 3 --size 64 --ddpm-measure 3 --repeats 1
	$(BIN)/python benchmarks/prep.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
