# Two entry points: `make demo` (main job on a built-in default) and `make test` (test suite).
# Both create or reuse .venv and install what they need; torch/torchvision are pinned via constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint format typecheck bench docs mutation clean install

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fewclip demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto --dist worksteal tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# Mutation testing of the feature world (hours on 2 cores; not part of `make test` or CI).
# Resumes where it stopped; the report goes to mutation-report.md.
# mutmut keeps its map of which tests call which function across runs and does not redo it
# when the callers change: a stale map selects too few tests (false survivors). Mapping
# again costs minutes; the mutants' results are kept.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,mutation]"
	rm -f mutants/mutmut-stats.json
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 || true
	$(BIN)/python scripts/mutation_report.py | tee mutation-report.md

bench: $(STAMP)
	$(BIN)/python -m benchmarks.search_speed
	$(BIN)/python -m benchmarks.train_speed

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
