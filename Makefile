# The two commands of the README:
#   make demo   set up .venv/, load two demo tenants, materialize them through Dagster, serve the API
#   make test   set up .venv/ if needed and run the whole test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv ui clean chromium

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lodestar demo

# The console's browser tests drive Debian's chromium (Playwright's own browser download cannot
# work here): installed with apt-get when it is missing (with sudo when not root).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) chromium
	$(VENV)/bin/python -m pytest -q

# The fast tier: no test that loads the real embedding model or starts real processes.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not model and not slow"

ui: $(STAMP)
	$(VENV)/bin/lodestar ui

clean:
	rm -rf var dagster_home/storage dagster_home/history dagster_home/logs dagster_home/schedules
