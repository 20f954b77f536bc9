# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GD     := $(VENV)/bin/gd-dask
# Reinstall when pyproject.toml or the pins change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints/dev.txt | cksum | cut -d' ' -f1)
PIP    := $(PY) -m pip install -q -c constraints/dev.txt

.PHONY: run test bench clean

$(STAMP): pyproject.toml constraints/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

$(VENV)/.bench-installed: $(STAMP)
	$(PIP) -e ".[test,bench]"
	touch $@

# The main job, end to end, on the bundled example (data generated if absent).
run: $(STAMP)
	test -d data/students || $(GD) make-data data/students
	$(PY) jobs/train.py configs/example.yaml

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(VENV)/.bench-installed
	$(PY) benchmarks/run.py

clean:
	rm -rf runs data/students .pytest_cache
