#!/usr/bin/env bash
# Train launch/gpu.flags on several GPU hosts: run this once on every host.
#
# Assumes: each host as in launch/gpu_host.sh (Python 3.11+, found or installed as it says), with
# this repository at the same path; every host can reach COORDINATOR_HOST:PORT (process 0's host;
# open that TCP port between them) and the GPUs of all hosts talk over NCCL (same network).
# Where the run is kept: every process restores from its own --workdir, so all hosts must see the
# same checkpoints. With BUCKET=gs://bucket[/path] (the same on every host) the workdir is
# $BUCKET/moe-gpu in Cloud Storage (jaxchar[gcs] is installed; each host keeps its own id cache
# of the text in ckpt/corpus_cache), which outlives the hosts: sample from it anywhere with
# `python -m jaxchar.sample --workdir=$BUCKET/moe-gpu`. Without BUCKET it is ckpt/moe-gpu, which
# must then be on a filesystem every host shares at this path (NFS and the like); with more than
# one host the script warns, as on separate disks only host 0 would hold the checkpoints and a
# rerun could not resume. Extra flags (e.g. --data=gs://bucket/texts/) follow the three arguments.
# Costs: nothing beyond the hosts (and the bucket's storage, a few MB of checkpoints). Start all
# hosts within --distributed_timeout_s (120 s) of each other; if one dies, the others stop within
# 30 s, and rerunning this script on every host (a replacement host too, e.g. for a preempted
# spot VM, given the same BUCKET) resumes from the last checkpoint.
#
#   host 0:  BUCKET=gs://my-bucket/runs launch/gpu_multihost.sh 10.0.0.2:12355 2 0
#   host 1:  BUCKET=gs://my-bucket/runs launch/gpu_multihost.sh 10.0.0.2:12355 2 1
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: [BUCKET=gs://bucket[/path]] $0 COORDINATOR_HOST:PORT NUM_HOSTS HOST_INDEX [extra flags]" >&2
  exit 2
fi
COORDINATOR=$1 NUM_HOSTS=$2 HOST_INDEX=$3
shift 3
BUCKET=${BUCKET:-}
cd "$(dirname "$0")/.."
EXTRAS=cuda,plot
WHERE=()
if [ -n "$BUCKET" ]; then
  # The bucket's naming rules; path parts of letters, digits, '-', '_' and '.'.
  if ! [[ $BUCKET =~ ^gs://([a-z0-9][a-z0-9._-]+[a-z0-9])(/[A-Za-z0-9._-]+)*/?$ ]] ||
     { [ ${#BASH_REMATCH[1]} -gt 63 ] && [[ ${BASH_REMATCH[1]} != *.* ]]; }; then
    echo "error: BUCKET=$BUCKET is not a Cloud Storage location of the form gs://bucket[/path]" \
         "(a bucket name of 3 to 63 lowercase letters, digits, '-', '_' and '.', starting and" \
         "ending with a letter or digit; path parts of letters, digits, '-', '_' and '.')." \
         "Nothing was installed." >&2
    exit 2
  fi
  EXTRAS=cuda,plot,gcs
  WHERE=(--workdir="${BUCKET%/}/moe-gpu" --cache_dir=ckpt/corpus_cache)
elif [ "$NUM_HOSTS" != 1 ]; then
  echo "warning: no BUCKET: the workdir is ckpt/moe-gpu on each host. Unless that is a" \
       "filesystem all $NUM_HOSTS hosts share at this path, only host 0 keeps the checkpoints" \
       "and a rerun cannot resume (every host restores from its own --workdir); set" \
       "BUCKET=gs://bucket[/path] on every host to keep the workdir in Cloud Storage." >&2
fi
. launch/python.sh
make_venv .venv "$EXTRAS"
python -m jaxchar.train --flagfile=launch/gpu.flags --coordinator_address="$COORDINATOR" \
  --num_processes="$NUM_HOSTS" --process_id="$HOST_INDEX" ${WHERE[@]+"${WHERE[@]}"} "$@"
