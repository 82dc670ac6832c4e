# `make demo` and `make test` work on a fresh machine: each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STORAGE ?= runs
# What .venv installs: every package at the version the suite passed with (pip-tools' format,
# for Linux x86_64 and Python 3.11); pyproject.toml keeps the ranges users install from.
LOCK := requirements.lock
PIP_VERSION := 26.3
# The lock's torch build; `make deps-latest TORCH_PINS=` tries the newest torch as well.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
LATEST := .deps-latest
EXTRAS := --extra test --extra onnx

.PHONY: demo test lint clean deps-latest lock

$(STAMP): pyproject.toml $(LOCK)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
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
	$(BIN)/ruff check prune_core studies analysis benchmarks tests tools
	$(BIN)/deptry .
	$(BIN)/python -m tools.docs_check

# The newest versions pyproject.toml's ranges allow, resolved into $(LATEST)/requirements.lock,
# installed into a throwaway venv, and the suite run there; then which pins differ from the
# lock. After it passes, `make lock` makes that resolution the project's lock.
deps-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)/venv
	$(LATEST)/venv/bin/pip install -q pip==$(PIP_VERSION) pip-tools
	printf '%s\n' $(TORCH_PINS) > $(LATEST)/torch.txt
	$(LATEST)/venv/bin/pip-compile -q --upgrade $(EXTRAS) --strip-extras --no-emit-index-url \
	  --no-emit-find-links -c $(LATEST)/torch.txt -o $(LATEST)/requirements.lock pyproject.toml
	$(LATEST)/venv/bin/pip install -q -r $(LATEST)/requirements.lock
	$(LATEST)/venv/bin/pip install -q --no-deps -e .
	$(PYTHON) tools/lock_diff.py $(LOCK) $(LATEST)/requirements.lock | tee $(LATEST)/diff.txt
	$(LATEST)/venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
	  --no-loadscope-reorder -p no:cacheprovider \
	  && echo "deps-latest: the suite passed; make lock takes these versions" \
	  || { echo "deps-latest: the suite failed with:"; cat $(LATEST)/diff.txt; exit 1; }
	cat $(LATEST)/diff.txt

# Takes the resolution `make deps-latest` tested as the lock.
lock:
	test -f $(LATEST)/requirements.lock || { echo "run make deps-latest first"; exit 2; }
	sed 's|$(LATEST)/requirements.lock|$(LOCK)|' $(LATEST)/requirements.lock > $(LOCK)
	$(PYTHON) tools/lock_diff.py $(LOCK) $(LATEST)/requirements.lock

clean:
	rm -rf $(STORAGE) .pytest_cache $(LATEST)
