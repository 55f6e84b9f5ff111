# make setup: fresh machine -> venv with the CPU stack, embedded model materialized.
# make test:  the whole suite, offline, CPU.
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
export RLTOOL_HOME ?= $(HOME)/.cache/rltool

.PHONY: setup test bench clean

setup: $(VENV)/.installed
	$(VENV)/bin/python -m rltool.actors.embedded

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(PY) $(VENV)
	touch $@

test: setup
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV)
