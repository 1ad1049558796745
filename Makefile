# The README's two commands: `make demo` and `make test`.
# torch==2.13.0 is installed first, alone: any looser spec with no torch present makes pip
# fetch the multi-GB CUDA build. With 2.13.0 installed, the project's `torch>=2.2` is satisfied.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.edgeae-installed

.PHONY: demo test test-fast wheel venv lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[train,server,ray,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeae demo

test: $(STAMP)
	$(PY) -m pytest -q

# The fast lane: everything but the tests marked slow (real trainings, exports, the README walk-through).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# A wheel in dist/ (the runtime; extras as usual: pip install 'dist/edgeae-0.1.0-py3-none-any.whl[server]').
wheel: $(PY)
	$(PIP) wheel -q --no-deps -w dist .

lint: $(STAMP)
	$(VENV)/bin/ruff check edgeae tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
