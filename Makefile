# One task runner. `make run` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# The suite's tests mostly wait (on processes, files, ledger records): four at a time
# on two cores take about half the time; each test keeps to its own files and processes.
PYTEST_WORKERS ?= 4

.PHONY: install compiled browser run test soak lint format bench bench-worktrees schemas docs \
	screenshot clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask]'
	@touch $(STAMP)

# The quickstart and the suite start `engine` hundreds of times: byte-compiled
# here (only what changed), each start skips compiling the project (~0.13 s of
# ~0.48 s), even where PYTHONDONTWRITEBYTECODE keeps Python from writing .pyc.
compiled: install
	@$(BIN)/python -m compileall -q cli engine ledger projections >/dev/null

run: compiled
	@$(BIN)/engine run examples/quickstart.yml; \
	$(BIN)/python examples/check_quickstart.py $$?

# The HTML report's tests open it in a real headless Chromium (Debian's package):
# installed here when missing and we may (root, apt-get); else the tests say why they skip.
browser:
	@command -v chromium >/dev/null || [ -x /usr/lib/chromium/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) \
	      >/dev/null || echo "make browser: installing chromium failed: the browser tests will skip" >&2; \
	  else \
	    echo "make browser: chromium is not installed and installing it needs root and apt-get" \
	      "(Debian package chromium): the browser tests will skip" >&2; \
	  fi; }

# Soak tests are deselected by addopts in pyproject.toml (so a bare pytest does the same).
# Exit status 5 is pytest's "no tests collected": a failure, said so.
test: compiled browser
	@$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests were collected" >&2; fi; \
	exit $$status

soak: install
	$(BIN)/python -m pytest -m soak $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install browser
	@command -v parallel >/dev/null || { command -v apt-get >/dev/null && \
	  (apt-get install -y parallel || (apt-get update && apt-get install -y parallel)) >/dev/null; } \
	  || echo "GNU parallel not installed: the dispatch benchmark will say so"
	$(BIN)/python benchmarks/bench_ledger.py --out benchmarks/results-ledger.md
	$(BIN)/python benchmarks/bench_dispatch.py --out benchmarks/results-dispatch.md
	$(BIN)/python benchmarks/bench_query.py --out benchmarks/results-query.md
	$(BIN)/python benchmarks/bench_dialect.py --out benchmarks/results-dialect.md
	$(BIN)/python benchmarks/bench_dask.py --out benchmarks/results-dask.md
	$(BIN)/python benchmarks/bench_report.py --out benchmarks/results-report.md
	$(BIN)/python benchmarks/bench_scale.py $(if $(MILLION),--million) --out benchmarks/results-scale.md

# Apart from `bench`: 200 items on a repository of 5,000 files, with and without
# worktree isolation, three times each, takes several minutes.
bench-worktrees: install
	$(BIN)/python benchmarks/bench_worktrees.py --out benchmarks/results-worktrees.md

# docs/report.png: the HTML audit report of a small run, as headless Chromium shows it.
screenshot: compiled browser
	$(BIN)/python benchmarks/screenshot_report.py docs/report.png

schemas: install
	$(BIN)/engine schema --out schemas

docs: install
	$(BIN)/python -m cli.docgen docs/cli.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache benchmarks/.work
