#!/usr/bin/env bash
# Run the benchmark on a fresh GPU or TPU machine and write its JSON.
#
# Assumes: Linux x86-64, Python 3.10+, network access to PyPI, this repository as the current
# directory or the script's parent; an NVIDIA GPU with a CUDA 12 driver (ACCEL=cuda, default) or
# a Cloud TPU VM (ACCEL=tpu). Costs: nothing beyond the machine; about 3 GB of wheels for CUDA.
# Takes about 2 minutes to install and 2 minutes to run.
#
#   ACCEL=cuda launch/bench_device.sh [out.json]
set -euo pipefail
cd "$(dirname "$0")/.."
ACCEL=${ACCEL:-cuda}
OUT=${1:-bench-$ACCEL.json}
[ -d .venv-bench ] || python3 -m venv .venv-bench
. .venv-bench/bin/activate
pip install -q -e ".[$ACCEL]"
python -c "import jax; print(jax.devices())"
python -m jaxchar.bench --json="$OUT" --batch_sizes=128,512,4096 --seconds=3
echo "wrote $OUT"
