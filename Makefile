# Entry points for a fresh Debian machine (as root) and for developers.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

# the demo needs FUSE and the S3 server only, not the test suite's frameworks (GBs of them)
$(VENV)/.demo-installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV) demo
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) -m unifs demo

test: setup
	bash scripts/test.sh $(VENV) $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/read_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
