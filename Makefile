# `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STORAGE ?= runs

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so nothing below pulls in another build
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# A second `make demo` continues (or just reports) the study the first one wrote.
demo: $(STAMP)
	if [ -f $(STORAGE)/quickstart/study.json ]; then \
	  $(BIN)/prune-study resume $(STORAGE)/quickstart; \
	else \
	  $(BIN)/prune-study run studies/specs/quickstart.yaml --storage $(STORAGE); \
	fi
	$(BIN)/prune-study report $(STORAGE)/quickstart -o $(STORAGE)/quickstart/report
	@echo "report: $(STORAGE)/quickstart/report/report.html"

# Test files run in TEST_WORKERS processes (pytest-xdist), a whole file to one worker, so a
# module's fixtures (a local Ray, a study run once for several tests) are built once; the
# files go out in the order tests/conftest.py gives them, the longest first.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  --durations=25

# deptry: every imported package is declared, every declared one imported (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check prune_core studies analysis benchmarks tests
	$(BIN)/deptry .

clean:
	rm -rf $(STORAGE) .pytest_cache
