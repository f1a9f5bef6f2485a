#!/usr/bin/env bash
# Train launch/gpu.flags on several GPU hosts: run this once on every host.
#
# Assumes: each host as in launch/gpu_host.sh (Python 3.11+, found or installed as it says), with
# this repository at the same path; every host can reach COORDINATOR_HOST:PORT (process 0's host;
# open that TCP port between them) and the GPUs of all hosts talk over NCCL (same network); a
# shared filesystem for ckpt/ is not needed (process 0 writes it). Costs: nothing beyond the
# hosts. Start all hosts within --distributed_timeout_s (120 s) of each other; if one dies, the
# others stop within 30 s and rerunning this script on every host resumes from the last
# checkpoint.
#
#   host 0:  launch/gpu_multihost.sh 10.0.0.2:12355 2 0
#   host 1:  launch/gpu_multihost.sh 10.0.0.2:12355 2 1
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 COORDINATOR_HOST:PORT NUM_HOSTS HOST_INDEX [extra flags]" >&2
  exit 2
fi
COORDINATOR=$1 NUM_HOSTS=$2 HOST_INDEX=$3
shift 3
cd "$(dirname "$0")/.."
. launch/python.sh
make_venv .venv cuda,plot
python -m jaxchar.train --flagfile=launch/gpu.flags --coordinator_address="$COORDINATOR" \
  --num_processes="$NUM_HOSTS" --process_id="$HOST_INDEX" "$@"
