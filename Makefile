# make setup: fresh machine -> venv with the CPU stack, embedded model materialized.
# make test:  the docs build (strict), then the whole suite, offline, CPU.
# make docs:  the documentation site from docs/ into site/ (mkdocs, strict: a broken link or anchor fails).
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
export RLTOOL_HOME ?= $(HOME)/.cache/rltool

.PHONY: setup test docs bench clean

setup: $(VENV)/.installed $(VENV)/.docs-installed
	$(VENV)/bin/python -m rltool.actors.embedded

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(PY) $(VENV)
	touch $@

$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

test: setup docs
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV)
