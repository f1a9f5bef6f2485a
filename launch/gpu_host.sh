#!/usr/bin/env bash
# Train launch/gpu.flags on this machine's GPUs (all of them, data-parallel with pmap).
#
# Assumes: Linux x86-64 with NVIDIA GPUs and a driver for CUDA 12 (`nvidia-smi` works), Python
# 3.10+, network access to PyPI and to raw.githubusercontent.com (the corpus). Costs: nothing
# beyond the machine you run it on; about 3 GB of CUDA wheels are downloaded into .venv.
# CUDA_VISIBLE_DEVICES limits the GPUs used; the batch (128) must divide by their number.
#
#   launch/gpu_host.sh [extra flags, e.g. --epochs=10]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -e '.[cuda,plot]'
python -m jaxchar.train --flagfile=launch/gpu.flags "$@"
