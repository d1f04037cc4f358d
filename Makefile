# Two commands for a fresh machine: `make demo` and `make test`. Both create or update .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rzero-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test test-slow test-browser demo world clean

# torch 2.14.1 + torchvision 0.29.1 are the versions measured on the reference CPU machine
# (open_clip needs a working torchvision beside torch); the package itself only asks for ranges.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The browser end-to-end tests (tests/test_browser_e2e.py) drive `rzero serve` in headless
# Chromium through chromium-driver: Debian's packages, installed here if missing (root or sudo).
# RZERO_REQUIRE_BROWSER=1: with the browser just installed, a skip could only hide a failure.
test-browser: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; }
	RZERO_REQUIRE_BROWSER=1 $(PY) -m pytest -q -m browser

demo: $(STAMP)
	$(VENV)/bin/rzero demo --out runs/demo

world: $(STAMP)
	$(VENV)/bin/rzero world build

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
