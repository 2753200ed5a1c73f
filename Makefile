# `make demo` and `make test` are all a new user needs; both run `make setup` first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
TF_VERSION := 2.21.0
# The CUDA build only where a GPU answers; the 1.6 GB CPU build everywhere else.
TF_PACKAGE ?= $(shell if nvidia-smi -L >/dev/null 2>&1; then echo "tensorflow[and-cuda]==$(TF_VERSION)"; else echo "tensorflow-cpu==$(TF_VERSION)"; fi)
STAMP := $(VENV)/.setup-$(firstword $(subst [, ,$(TF_PACKAGE)))

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt "$(TF_PACKAGE)"
	touch $@

demo: setup
	$(PY) -m featurevis.demo

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache
