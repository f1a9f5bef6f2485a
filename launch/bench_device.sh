#!/usr/bin/env bash
# The device benchmark (python -m jaxchar.bench_device): the trainer at global batch 128 to
# 65,536, fused and Flax cells, float32 and bfloat16, lax.scan unroll 1 to 8; validation;
# sampling at 1, 64 and 1,024 rows; compile times; the device's name and memory. Writes OUT (JSON)
# and the Markdown table for BENCHMARKS.md beside it (OUT with .md), in at most about 5 minutes.
#
# Assumes: this repository as the script's parent. Where the active Python's JAX already sees a
# GPU or TPU (a conda environment, a container image, a cluster without internet), it uses that
# environment as it is: nothing is installed, no network is needed, jaxchar is run from this
# checkout (its dependencies jax, flax, optax, orbax-checkpoint, absl-py, numpy and tqdm must be
# there; tensorboardX and matplotlib are not needed). Otherwise it makes .venv-bench with a Python
# 3.11+ (found or installed as launch/python.sh says) and installs jaxchar[$ACCEL] from PyPI
# (ACCEL=cuda: an NVIDIA GPU with a CUDA 12 driver, about 3 GB of wheels; ACCEL=tpu: a Cloud TPU
# VM). ACCEL=cpu runs the same suite at tiny sizes on the CPU, offline, with the active Python (the
# test suite does, so the script cannot rot). BUDGET_S (default 270) bounds the measuring: cells
# not reached by then are listed as skipped. Costs: nothing beyond the machine.
#
#   launch/bench_device.sh [out.json]            (ACCEL=auto: the active JAX's GPU or TPU)
#   ACCEL=cpu launch/bench_device.sh out.json
set -euo pipefail
cd "$(dirname "$0")/.."
ACCEL=${ACCEL:-auto}
OUT=${1:-bench-device.json}
BUDGET_S=${BUDGET_S:-270}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's jaxchar, installed or not
sees_accelerator() {
  python -c 'import jax, sys; sys.exit(jax.default_backend() not in ("gpu", "tpu"))' 2>/dev/null
}
case "$ACCEL" in
  cpu)
    JAX_PLATFORMS=cpu exec python -m jaxchar.bench_device --profile=cpu --json="$OUT" \
      --budget_s="$BUDGET_S" ;;
  auto|cuda|tpu)
    if command -v python >/dev/null && sees_accelerator; then
      echo "using the active environment: $(command -v python)" >&2
    elif [ "$ACCEL" = auto ]; then
      echo "error: the active Python's JAX sees no GPU or TPU. Activate the environment where it" \
           "does, or set ACCEL=cuda or ACCEL=tpu to install jaxchar[cuda] or jaxchar[tpu] into" \
           ".venv-bench (needs PyPI), or ACCEL=cpu for the tiny CPU run." >&2
      exit 2
    else
      . launch/python.sh
      make_venv .venv-bench "$ACCEL"
      sees_accelerator || { echo "error: JAX sees no GPU or TPU even with jaxchar[$ACCEL]" \
                                 "installed (python -c 'import jax; print(jax.devices())')." >&2; exit 2; }
    fi
    exec python -m jaxchar.bench_device --profile=device --json="$OUT" --budget_s="$BUDGET_S" ;;
  *)
    echo "error: ACCEL=$ACCEL; use auto, cuda, tpu or cpu." >&2
    exit 2 ;;
esac
