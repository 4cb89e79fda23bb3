# The two set-up-and-run commands of the README, plus helpers.
# Every target creates the project's virtual environment .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gradlab-installed
SITE   := _build/html/index.html

.PHONY: book test lab bench lint unit chapters site lock clean

# Install from pinned versions only (constraints.txt): torch is the CPU build, no CUDA wheels.
$(STAMP): pyproject.toml constraints.txt .jupyter/lab-overrides.json
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "gradlab needs Python >= 3.11"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[book,dev]'
	@# .md chapters open as notebooks in JupyterLab (jupytext), for this environment only.
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@cp .jupyter/lab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $@

## make book: execute every chapter and build the static site.
book: $(STAMP)
	$(BIN)/jupyter-book build . --path-output . --all
	@echo "Site: $(CURDIR)/$(SITE)"

## make test: lint, unit tests, every chapter executed, site built with warnings as errors.
test: $(STAMP) lint site unit

lint: $(STAMP)
	$(BIN)/ruff check gradlab tests bench conftest.py

site: $(STAMP)
	$(BIN)/jupyter-book build . --path-output . --all -W -n --keep-going
	$(BIN)/python tests/check_offline.py _build/html

unit: $(STAMP)
	$(BIN)/python -m pytest

## make lab: open the chapters in JupyterLab (.md chapters open as notebooks).
lab: $(STAMP)
	$(BIN)/jupyter lab book/

## make bench: chapter times, test-suite time, monitor and clipping overheads.
bench: $(STAMP)
	$(BIN)/python bench/run.py

lock:
	rm -rf /tmp/gradlab-lock && $(PYTHON) -m venv /tmp/gradlab-lock
	/tmp/gradlab-lock/bin/pip install --quiet 'torch==2.13.0' && /tmp/gradlab-lock/bin/pip install --quiet -e '.[book,dev]'
	/tmp/gradlab-lock/bin/pip freeze --exclude-editable | grep -v '^gradlab' > constraints.txt.new
	@echo "Review constraints.txt.new and move it over constraints.txt (keep the header)."

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis
