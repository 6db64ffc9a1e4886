# The two commands a newcomer runs (see README):  make demo   and   make test
PY ?= python3
VENV ?= .venv
# On CPU machines without internet access to CUDA wheels, torch==2.13.0 resolves to the local
# CPU wheel. Override on a GPU machine, e.g.  make setup TORCH_SPEC="torch==2.5.1"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup test demo lint format clean

setup: $(VENV)/.installed

# torch is installed first, alone and pinned, so that installing adaptreid (which asks only
# for torch>=2.1) never makes pip pick a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/adaptreid demo

# lint: style (ruff), the layers of README "The code" (import-linter, pyproject.toml) and
# dead code (vulture at 60% confidence; names only frameworks call are in vulture_whitelist.py).
lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/vulture adaptreid vulture_whitelist.py --min-confidence 60

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
