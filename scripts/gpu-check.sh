#!/usr/bin/env bash
# On a machine with GPUs: two pinned workers (GPUS=0,1), a few jobs, the device and seconds per
# iteration of each. `make setup` installs tensorflow[and-cuda] where nvidia-smi answers.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
make setup
# As a module from the repository root, so that devstack/ (not installed: it stays in the checkout) imports.
exec .venv/bin/python -m scripts.gpu_check
