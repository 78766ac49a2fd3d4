# Two commands on a fresh machine (see README):  make demo   and   make test
# Each creates .venv when missing and installs what it needs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.livertumor-installed
DEMO_OUT ?= demo_output

# torch/torchvision: the releases that lie on this machine's disk (CUDA build, runs on the CPU too);
# slicer-core: Slicer's MRML core and module logics matching Slicer 5.12, for the headless tests.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
SLICER_CORE_PIN := slicer-core==5.12.4.0

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet $(SLICER_CORE_PIN)
	$(PY) -m pip install --quiet -e ".[ml,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/livertumor demo --out $(DEMO_OUT)

test: venv
	bash Testing/tools/ensure_orthanc.sh
	$(PY) -m pytest -q -ra

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	for script in benchmarks/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
