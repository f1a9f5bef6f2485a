#!/usr/bin/env bash
# Train launch/gpu.flags on this machine's GPUs (all of them, data-parallel with pmap).
#
# Assumes: Linux x86-64 with NVIDIA GPUs and a driver for CUDA 12 (`nvidia-smi` works); network
# access to PyPI and to raw.githubusercontent.com (the corpus). Python: 3.11+ (jax 0.10.2 needs
# it); the stock python3 if it is that new, else python3.13/3.12/3.11 on PATH, else PYTHON=...,
# else uv installs Python 3.12 for this user (from GitHub; launch/python.sh says how); with none of
# these it stops with a clear message before making anything. Costs: nothing beyond the machine
# you run it on; about 3 GB of CUDA wheels are downloaded into .venv. CUDA_VISIBLE_DEVICES limits
# the GPUs used; the batch (128) must divide by their number.
#
#   launch/gpu_host.sh [extra flags, e.g. --epochs=10]
set -euo pipefail
cd "$(dirname "$0")/.."
. launch/python.sh
make_venv .venv cuda,plot
python -m jaxchar.train --flagfile=launch/gpu.flags "$@"
