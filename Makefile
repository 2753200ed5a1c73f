# `make demo` and `make test` are all a new user needs; both run `make setup` first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
TF_VERSION := 2.21.0
# The CUDA build only where a GPU answers; the 1.6 GB CPU build everywhere else.
TF_PACKAGE ?= $(shell if nvidia-smi -L >/dev/null 2>&1; then echo "tensorflow[and-cuda]==$(TF_VERSION)"; else echo "tensorflow-cpu==$(TF_VERSION)"; fi)
# The stamp names the whole TensorFlow spec (tensorflow[and-cuda]==2.21.0 -> .setup-tensorflow-and-cuda-2.21.0),
# so a new TF_VERSION or a switch between the CPU and CUDA builds reinstalls.
STAMP := $(VENV)/.setup-$(subst ],,$(subst [,-,$(subst ==,-,$(TF_PACKAGE))))

.PHONY: setup browser demo test test-all bench bench-quick quality quality-defaults up down clean clean-results

setup: $(STAMP) browser

# The project itself, editable (a change to the code takes effect without reinstalling), with the `test` extra
# (which brings `dev`, the local stack's, and `s3`); pyproject.toml declares every dependency but TensorFlow.
# featurevis/__init__.py holds the version, which the installed metadata copies.
$(STAMP): pyproject.toml featurevis/__init__.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]" "$(TF_PACKAGE)"
	# Keras 2 (tf-keras), so the tests write legacy .h5 files as Keras 2 users did; it names `tensorflow` as its
	# dependency, which tensorflow-cpu provides under another name, hence --no-deps.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "tf-keras==$(TF_VERSION)"
	touch $@

# Headless Chromium renders Flower in the browser test; Debian's package, installed where we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: install Debian's chromium for the Flower browser test"

demo: setup
	$(PY) -m devstack.demo

# Every test but those marked slow (the scale test; every target of every people model by every method):
# README.md's "Two commands" says how long each takes; `make test-all` runs them too.
test: setup
	$(PY) -m pytest -m "not slow"

test-all: setup
	$(PY) -m pytest

# Speed against the tutorial's way and a bare loop; prints a table, writes bench/results.json. A module, not a
# script: it starts devstack's local stack, which is not installed and imports from the repository root.
bench: setup
	$(PY) -m bench.run

bench-quick: setup
	$(PY) -m bench.run --quick

# Every method at its defaults, scored; writes quality/results.json and quality/contact_sheet.png.
quality: setup
	$(PY) -m quality.run

# Each method's iterations, learning rate and transform strength, scored on other seeds; writes
# quality/defaults.json, and fails when contract.METHOD_DEFAULTS is not what it chose.
quality-defaults: setup
	$(PY) -m quality.defaults

# Redis, a worker, Flower (http://127.0.0.1:5555) and the queue metrics (http://127.0.0.1:9808/metrics), left
# running; `make down` stops them, keeping queued jobs.
up: setup
	$(PY) -m devstack.stack up

down:
	$(PY) -m devstack.stack down

# The environment and caches only: results/ holds finished jobs, which `make clean-results` deletes.
clean:
	rm -rf $(VENV) .pytest_cache

clean-results:
	rm -rf results
