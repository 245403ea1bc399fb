# `make test` and `make demo` do all set-up on a fresh machine.
# .venv is rebuilt only when setup.cfg or pyproject.toml change (the stamp file records the last install).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DOCS   := NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --clean

.PHONY: test demo nbs docs docs-check bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $(STAMP)

# the notebooks run beside the tests (each trains with one torch thread, so two cores do both in about the
# time of the longer); their log prints when both are done; then the docs are built and checked in Chromium
# (docs-check) when it is on the PATH, and one line says it was skipped when it is not; any of the three
# failing fails the target
test: $(STAMP)
	@log=$$(mktemp); $(PY) tools/run_nbs.py nbs >$$log 2>&1 & pid=$$!; \
	$(PY) -m pytest; tests=$$?; wait $$pid; nbs=$$?; cat $$log; rm -f $$log; docs=0; \
	if $(PY) tools/docs_check.py --find >/dev/null; then { $(DOCS) -q && $(PY) tools/docs_check.py _docs; } || docs=1; \
	else echo "docs-check skipped: no Chromium on the PATH (Debian: apt-get install chromium)"; fi; \
	test $$tests -eq 0 && test $$nbs -eq 0 && test $$docs -eq 0

demo: $(STAMP)
	$(VENV)/bin/fast-impl demo

# re-execute the notebooks and keep their outputs (for the rendered docs)
nbs: $(STAMP)
	$(PY) tools/run_nbs.py --inplace nbs

# the documentation site in _docs/ from the notebooks' stored outputs and the docstrings (mkdocs.yml);
# fails, naming it, on a notebook that raised or was never run
docs: $(STAMP)
	$(DOCS)
	@echo "open _docs/index.html (for search, serve it: $(PY) -m http.server -d _docs)"

# the built site opened in headless Chromium at 1280 px (tools/docs_check.py): fails, naming the page and the
# output, on a text output that wraps or a table cut off at the right (Chromium: apt-get install chromium)
docs-check: docs
	$(PY) tools/docs_check.py _docs

bench: $(STAMP)
	$(PY) bench/summary_bench.py
	$(PY) bench/split_registry.py
	$(PY) bench/transfer.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache _docs
