# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch pinned exactly: the CPU wheel; a looser spec pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	# constraints.txt: the exact versions last tested (no resolver backtracking).
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test,dask,bench]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check coinpp_pipeline flows tests benchmarks
	$(VENV)/bin/mypy coinpp_pipeline flows

# Prefect runs the flows on a temporary local server (no analytics: no network here).
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

demo: $(STAMP)
	$(VENV)/bin/python -m coinpp_pipeline quickstart

test: $(STAMP)
	$(VENV)/bin/python -m pytest

.PHONY: install lint demo test
