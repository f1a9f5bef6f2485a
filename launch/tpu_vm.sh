#!/usr/bin/env bash
# Train launch/tpu.flags on a Cloud TPU VM slice, every worker at once.
#
# Assumes: the gcloud CLI, logged in, with a project that has TPU quota in $ZONE; this repository
# as the current directory, in a venv with jaxchar[tpu] (its pip resolves the workers' install);
# the workers can reach PyPI, GitHub (uv's Python) and raw.githubusercontent.com (the corpus).
# Python: the image ($VERSION, Ubuntu 22.04) ships Python 3.10 and jaxchar needs 3.11+, so each
# worker gets CPython $PYTHON_VERSION (default 3.12) from uv, installed for the user (no root;
# launch/python.sh says how; a worker whose python3 is already 3.11+ uses it). Before creating
# anything, pip checks here that jaxchar[tpu,plot] resolves for that Python on Linux x86-64. Costs: the TPU VM is billed by the hour from `create` until `delete` (see
# Cloud TPU pricing for $ACCELERATOR in $ZONE; spot VMs, with SPOT=1, cost far less but can be
# preempted: rerunning this script resumes from the last checkpoint). The script deletes the VM
# at the end unless KEEP=1. Nothing else is created. Before creating anything it compiles every
# program of the run for $ACCELERATOR on this machine (python -m jaxchar.compile_check, which needs
# libtpu here: pip install -e '.[tpu]' in the active venv, no TPU) and stops if the run would not
# fit in the chips' memory. Extra training flags go in $FLAGS, e.g. FLAGS="--batch_size=1024".
#
#   ZONE=us-central2-b ACCELERATOR=v4-8 NAME=jaxchar launch/tpu_vm.sh
set -euo pipefail
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-8}
NAME=${NAME:-jaxchar}
VERSION=${VERSION:-tpu-ubuntu2204-base}
SPOT_FLAG=$([ "${SPOT:-0}" = 1 ] && echo --spot || true)
FLAGS=${FLAGS:-}

# Nothing is paid for until the install is known to resolve for the workers' Python and the run
# to compile and fit on $ACCELERATOR.
cd "$(dirname "$0")/.."
. launch/python.sh
check_install_resolves "$PYTHON_VERSION" tpu,plot || exit 2
python -m jaxchar.compile_check --topology="$ACCELERATOR" --flagfile=launch/tpu.flags $FLAGS

if ! gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$VERSION" $SPOT_FLAG
fi
ssh_all() { gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$1"; }

# Copy this checkout (without venvs, data or checkpoints) to every worker, then install.
tar czf /tmp/jaxchar.tgz --exclude='.venv*' --exclude=.cuda-aot --exclude=ckpt \
  --exclude=data/moes_tavern_lines.txt .
gcloud compute tpus tpu-vm scp /tmp/jaxchar.tgz "$NAME":~/jaxchar.tgz --zone="$ZONE" --worker=all
ssh_all "mkdir -p jaxchar && tar xzf jaxchar.tgz -C jaxchar && cd jaxchar &&
  PYTHON_VERSION=$PYTHON_VERSION bash -c '. launch/python.sh && make_venv .venv tpu,plot'"
# Every worker runs the same command; --distributed=on lets JAX find the slice's hosts.
ssh_all 'cd jaxchar && . .venv/bin/activate && python -m jaxchar.train --flagfile=launch/tpu.flags '"$FLAGS"
# Checkpoints, metrics and samples are written by worker 0.
gcloud compute tpus tpu-vm scp --recurse "$NAME":~/jaxchar/ckpt/moe-tpu ckpt/ --zone="$ZONE" \
  --worker=0
[ "${KEEP:-0}" = 1 ] || gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
