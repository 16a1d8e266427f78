# `make demo` and `make test` are all a newcomer needs: each creates .venv and installs the
# project (with torch, timm, Lightning, PyAV ...) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-all bench clean install browser

install: $(STAMP) browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/clipdoctor demo --out demo

# The HTML report's browser test drives a real headless Chromium (Debian: chromium and
# chromium-driver). Installed here when missing and we may (root with apt-get); otherwise a
# one-line note, and that one test is skipped.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium and chromium-driver for the HTML report's browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver >/dev/null) \
	  || echo "note: could not install chromium / chromium-driver; the browser test will not run"; \
	else echo "note: no /usr/bin/chromium (needs root and apt-get to install); the browser test is skipped"; fi

# pytest exits 5 when it collected no test: that must fail, never pass silently
test: $(STAMP) browser
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: $(STAMP) browser
	@$(BIN)/python -m pytest -m "" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-all: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo *.egg-info .pytest_cache
