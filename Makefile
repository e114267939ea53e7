# `make test` and `make reproduce` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Exact versions behind the README's numbers (`pip freeze` of the tested venv).
CONSTRAINTS := requirements/constraints.txt
# ACCEL=cuda12 or cuda13 (NVIDIA GPU), or ACCEL=tpu (Cloud TPU VM): also install jax's accelerator build.
ACCEL  ?=
comma  := ,
EXTRAS := dev$(if $(ACCEL),$(comma)$(ACCEL))
STAMP  := $(VENV)/.installed$(if $(ACCEL),-$(ACCEL))
# Wheels of the core install only (jax, jaxlib, numpy, ...) for tests/test_packaging.py,
# which installs `bn` without extras into a fresh venv from them, offline.
WHEELS := $(VENV)/wheelhouse
# ... and the [report] extra's wheels, kept apart: the same test then adds them and runs `bn report` offline.
REPORT_WHEELS := $(VENV)/wheelhouse-report
FMNIST := /usr/share/datasets/fashion-mnist
# Test files run in parallel, one worker per core (a file stays on one worker, so its
# module-scoped fixtures are built once); the tests are bound by XLA compile time.
PYTEST_ARGS ?= -m "not slow" -n auto --dist loadfile
OUT    ?= reproduce
MODE   ?= quick

ifneq ($(filter-out cuda12 cuda13 tpu,$(ACCEL)),)
$(error ACCEL=$(ACCEL): use ACCEL=cuda12 or ACCEL=cuda13 (NVIDIA GPU), ACCEL=tpu (Cloud TPU) or leave it unset (CPU))
endif

.PHONY: install data test test-slow reproduce clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip uninstall -q -y bn 2>/dev/null || true  # a venv from before the rename to bn-lab
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip wheel -q -c $(CONSTRAINTS) -w $(WHEELS) . setuptools
	rm -f $(WHEELS)/bn_lab-*.whl
	$(BIN)/python -m pip wheel -q -c $(CONSTRAINTS) -w $(REPORT_WHEELS) matplotlib
	touch $(STAMP)

# Fashion-MNIST as IDX files: the Debian/Ubuntu package dataset-fashion-mnist (offline,
# through apt-get); without apt-get, `bn data prepare fashion_mnist` downloads the four
# files (31 MB, needs network) into ~/.cache/bn/datasets/fashion_mnist and checks them.
PREPARE = { echo "Fashion-MNIST: bn data prepare fashion_mnist (downloads 31 MB once; needs network)" >&2; \
  $(BIN)/bn data prepare fashion_mnist >/dev/null || \
  echo "warning: no Fashion-MNIST (see above); tests that need it are skipped and make reproduce fails." >&2; }

data: install
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || $(PREPARE); \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	  { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || $(PREPARE); \
	else \
	  $(PREPARE); \
	fi

test: install data
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The main job: the claims ledger (C1-C7) and its report in $(OUT)/report.md. Re-running resumes.
reproduce: install data
	$(BIN)/bn reproduce --$(MODE) --out $(OUT)

test-slow: install data
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
