# Two commands on a fresh machine: `make demo` and `make test`. Both create and reuse .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
OUT    ?= demo_out

.PHONY: venv demo test test-slow test-runtime lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,export,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(VENV)/bin/fgad-demo --out $(OUT)

test: venv
	$(PY) -m pytest -q -m "not slow and not gpu" tests

test-slow: venv
	$(PY) -m pytest -q -m "slow" tests

lint: venv
	$(PY) -m ruff check src tests

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
