# Two commands work on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv and install ldmonai with the torch pin (constraints.txt). The demo installs
# only what it runs (ldmonai, its sample data and the deepbet skull-stripper, `.[samples,deepbet]`); the suite adds `.[dev]` on top
# (diffusers, peft, the Astra encoder weights, the conversion baselines, pytest).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ldmonai-installed
DEV_STAMP := $(VENV)/.ldmonai-dev-installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# The checkout goes on sys.path through a plain .pth line: setuptools' default editable finder
# imports pathlib, importlib.util and re at every interpreter start (10 ms), which a wheel
# install never pays and which is a tenth of `ldmonai prep convert` on dcm_qa_nih.
EDITABLE := --config-settings editable_mode=compat

LABEL_VENV  ?= .venv-label
LABEL_STAMP := $(LABEL_VENV)/.ldmonai-installed

.PHONY: setup dev demo test bench clean label-env

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt $(EDITABLE) -e ".[samples,deepbet]"
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} was installed, expected 2.13.0')"
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt $(EDITABLE) -e ".[dev]"
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} was installed, expected 2.13.0')"
	touch $(DEV_STAMP)

# MONAI Label runs in its own environment: monailabel imports torchvision, whose registry
# wheels all link CUDA. --isolated makes pip ignore the machine's local CPU wheel folder and
# take the registry's CUDA build of the same torch 2.13.0 (about 4.8 GB; it runs on CPU).
# The main .venv is never touched and stays on the CPU wheel. ldmonai goes in without its
# dependencies (it needs pydicom 3, monailabel pydicom 2); what serving a bundle imports (monai
# with nibabel/ignite/pillow/tqdm, einops, scipy, pyyaml) comes with monailabel.
$(LABEL_STAMP): pyproject.toml constraints-label.txt
	$(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip --disable-pip-version-check install -q --isolated -c constraints-label.txt torch torchvision
	$(LABEL_VENV)/bin/python -m pip --disable-pip-version-check install -q -c constraints-label.txt monailabel==0.8.5 "monai==1.6.1"
	$(LABEL_VENV)/bin/python -m pip --disable-pip-version-check install -q --no-deps -e .
	$(LABEL_VENV)/bin/python -c "import torch, torchvision, monailabel, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else f'torch {torch.__version__} in $(LABEL_VENV)')"
	touch $(LABEL_STAMP)

label-env: $(LABEL_STAMP)

setup: $(STAMP)

dev: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/ldmonai demo --out-dir demo_out

# The MONAI Label environment is set up before the suite (it is an environment, like .venv);
# tests/test_monailabel.py still checks what it holds.
test: $(DEV_STAMP) $(LABEL_STAMP)
	$(BIN)/python -m pytest -q --durations=25 tests

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/convert.py
	$(BIN)/python benchmarks/ldseg.py --dims 3 --size 64 --ddpm-measure 3 --repeats 1
	$(BIN)/python benchmarks/prep.py
	$(BIN)/python benchmarks/gdm.py

clean:
	rm -rf $(VENV) $(LABEL_VENV) demo_out .pytest_cache
