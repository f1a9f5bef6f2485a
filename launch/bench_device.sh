#!/usr/bin/env bash
# Run the benchmark on a fresh GPU or TPU machine and write its JSON: the straightforward Flax
# step, the trainer with --lstm_impl=fused and with --lstm_impl=flax, the 6,000-symbol case,
# validation and sampling (the CPU-only settings, one device per core and malloc, do nothing there).
#
# Assumes: Linux x86-64, Python 3.10+, network access to PyPI, this repository as the current
# directory or the script's parent; an NVIDIA GPU with a CUDA 12 driver (ACCEL=cuda, default) or
# a Cloud TPU VM (ACCEL=tpu). Costs: nothing beyond the machine; about 3 GB of wheels for CUDA.
# Takes about 2 minutes to install and 5 minutes to run.
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
for batch in 128 4096; do
  python -m jaxchar.bench --json="${OUT%.json}-batch$batch.json" --train_batch=$batch --seconds=3
done
echo "wrote ${OUT%.json}-batch128.json and ${OUT%.json}-batch4096.json"
