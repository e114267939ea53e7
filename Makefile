# `make test` and `make reproduce` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
# Test files run in parallel, one worker per core (a file stays on one worker, so its
# module-scoped fixtures are built once); the tests are bound by XLA compile time.
PYTEST_ARGS ?= -m "not slow" -n auto --dist loadfile
OUT    ?= reproduce
MODE   ?= quick

.PHONY: install data test test-slow reproduce clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The offline Fashion-MNIST (Debian/Ubuntu package dataset-fashion-mnist).
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "warning: cannot install dataset-fashion-mnist (needs apt-get as root); tests that need it are skipped." >&2; \
	fi

test: install data
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The main job: the claims ledger (C1-C6) and its report in $(OUT)/report.md. Re-running resumes.
reproduce: install data
	$(BIN)/bn reproduce --$(MODE) --out $(OUT)

test-slow: install data
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
