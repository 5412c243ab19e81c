# Two commands, as README says: `make demo` and `make test`. Both create .venv if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on these machines the pinned CPU wheel lies on disk; pyproject's torch range would let
	# pip resolve a newer torch (a multi-GB CUDA build) if torch were not installed before anything else.
	$(BIN)/pip install -q torch==2.13.0
	# the exact versions tested (constraints.txt) within pyproject's ranges
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,ray,nnunet]"
	touch $(STAMP)

.PHONY: install demo test lint docs clean
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/segsynth demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --durations=15

lint: $(STAMP)
	$(BIN)/ruff check segsynth tests benchmarks

# the docs site (mkdocs.yml, docs/): --strict fails on a broken link or a missing API symbol
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

clean:
	rm -rf demo_output .pytest_cache site
