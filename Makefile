# The two set-up-and-run commands of the README, plus helpers.
# Every target creates the project's virtual environment .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gradlab-installed
SITE   := _build/html/index.html
# Executed chapters, keyed by their code; emptied when gradlab/ or the pins change
# (book/_ext/chapter_cache.py). The site build and pytest both read and fill it.
CACHE  := _build/.jupyter_cache

.PHONY: book test lab bench lint unit chapters site lock clean

# Install from pinned versions only (constraints.txt): torch is the CPU build, no CUDA wheels.
$(STAMP): pyproject.toml constraints.txt .jupyter/lab-overrides.json
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "gradlab needs Python >= 3.11"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[book,dev]'
	@# .md chapters open as notebooks in JupyterLab (jupytext), for this environment only.
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@cp .jupyter/lab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@# The kernel's display name is written into a chapter's header when JupyterLab saves it:
	@# name it as the headers do ("Python 3", not ipykernel's "Python 3 (ipykernel)").
	@$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" > /dev/null
	@touch $@

## make book: build the static site. Chapters whose code changed (or all of them, when gradlab/
## or the pins changed) are executed first, in parallel, and cached; the others are not executed.
## make book FORCE=1 empties the cache and executes every chapter.
book: $(STAMP)
	$(if $(FORCE),rm -rf $(CACHE))
	$(BIN)/jupyter-book build . --path-output .
	@echo "Site: $(CURDIR)/$(SITE)"

## make test: lint; the site built with warnings as errors (every page re-read; chapters not in
## the cache executed, once); the offline check; pytest: unit tests, every chapter (from the
## cache the site build just filled), and the site's pages in headless Chromium.
test: $(STAMP) lint site unit

lint: $(STAMP)
	$(BIN)/ruff check gradlab tests bench conftest.py book/_ext

site: $(STAMP)
	$(BIN)/jupyter-book build . --path-output . --all -W -n --keep-going
	$(BIN)/python tests/check_offline.py _build/html

unit: $(STAMP)
	$(BIN)/python -m pytest

## make chapters: execute the chapters that are not in the cache (in parallel), nothing else.
chapters: $(STAMP)
	$(BIN)/python book/_ext/chapter_cache.py

## make lab: open the chapters in JupyterLab (.md chapters open as notebooks).
lab: $(STAMP)
	$(BIN)/jupyter lab book/ $(if $(filter 0,$(shell id -u)),--allow-root)

## make bench: chapter times, warm site rebuild, test-suite time, monitor and clipping overheads,
## gl.doctor's run time.
bench: $(STAMP)
	$(BIN)/python bench/run.py

lock:
	rm -rf /tmp/gradlab-lock && $(PYTHON) -m venv /tmp/gradlab-lock
	/tmp/gradlab-lock/bin/pip install --quiet 'torch==2.13.0' && /tmp/gradlab-lock/bin/pip install --quiet -e '.[book,dev]'
	/tmp/gradlab-lock/bin/pip freeze --exclude-editable | grep -v '^gradlab' > constraints.txt.new
	@echo "Review constraints.txt.new and move it over constraints.txt (keep the header)."

## make clean: remove every build output, the chapter cache included.
clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis
