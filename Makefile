# Set-up and entry points. Each target creates and reuses .venv.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/digits

.PHONY: demo test format

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs, then trains the default config on the bundled digits.
demo: $(STAMP)
	$(VENV)/bin/python -m sgd_quad.main --config=configs/digits.py \
	  --workdir=$(WORKDIR)

# Installs, then checks formatting, lints and runs the test suite.
test: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest --durations=15 -q

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
