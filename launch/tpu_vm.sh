#!/usr/bin/env bash
# Train launch/tpu.flags on a Cloud TPU VM slice, every worker at once.
#
# Assumes: the gcloud CLI, logged in, with a project that has TPU quota in $ZONE; this repository
# as the current directory, in a venv with jaxchar[tpu] (its pip resolves the workers' install);
# the workers can reach PyPI, GitHub (uv's Python) and raw.githubusercontent.com (the corpus).
# Python: the image ($VERSION, Ubuntu 22.04) ships Python 3.10 and jaxchar needs 3.11+, so each
# worker gets CPython $PYTHON_VERSION (default 3.12) from uv, installed for the user (no root;
# launch/python.sh says how; a worker whose python3 is already 3.11+ uses it). Before creating
# anything, pip checks here that jaxchar[tpu,plot] resolves for that Python on Linux x86-64.
#
# Where the run is kept: with BUCKET=gs://bucket[/path] (a Cloud Storage bucket you made, in
# $ZONE's region: `gcloud storage buckets create gs://NAME --location=REGION`) the workdir is
# $BUCKET/moe-tpu, written by the workers directly (each keeps its own id cache of the text in
# ~/jaxchar/ckpt/corpus_cache); nothing is copied back, and `python -m jaxchar.sample
# --workdir=$BUCKET/moe-tpu` samples from it here (with pip install -e '.[gcs]'). Without BUCKET
# it is ~/jaxchar/ckpt/moe-tpu on worker 0, copied back to ckpt/moe-tpu at the end. BUCKET is
# required with SPOT=1 and on slices of more than one worker (ACCELERATOR v4-16, v5litepod-16
# and larger; up to -8 is one worker), and the script refuses before creating anything without
# it: a spot VM is deleted when preempted (it cannot be restarted, only recreated) and its disk
# with it, and the workers of a slice share no disk while every one restores from its own
# --workdir, so only a bucket holds checkpoints that every worker of a new VM can resume from.
# DATA=gs://bucket/texts/ (a file, folder or glob) is read by the workers from the bucket;
# DATA=data/my.txt (a path inside this checkout) travels with the checkout. Without DATA:
# launch/tpu.flags' text (the Moe's Tavern corpus, fetched by each worker).
#
# Rerunning: the script looks at the VM first (describe's state): none -> create it; PREEMPTED
# or TERMINATED -> delete and recreate it (with BUCKET, training resumes from the bucket;
# without, the checkpoints on its disk are gone and training starts afresh); READY -> reuse it
# (training resumes from its workdir); any other state -> stop and say what to do. If training
# stops early (preemption, an error), the VM is left as it is and the script says how to resume:
# rerun the same command.
#
# Costs: the TPU VM is billed by the hour from `create` until `delete` (see Cloud TPU pricing for
# $ACCELERATOR in $ZONE; spot VMs, with SPOT=1, cost far less but can be preempted at any time);
# the bucket's storage (the checkpoints: a few MB for launch/tpu.flags) and operations. The
# script deletes the VM at the end unless KEEP=1. Nothing else is created. Before creating
# anything it compiles every program of the run for $ACCELERATOR on this machine (python -m
# jaxchar.compile_check, which needs libtpu here: pip install -e '.[tpu]' in the active venv, no
# TPU) and stops if the run would not fit in the chips' memory (for DATA=gs://… it checks with
# launch/tpu.flags' text, so an alphabet much larger than its 65 characters is not checked).
# Extra training flags go in $FLAGS, e.g. FLAGS="--batch_size=1024".
#
#   ZONE=us-central2-b ACCELERATOR=v4-8 NAME=jaxchar launch/tpu_vm.sh
#   SPOT=1 BUCKET=gs://my-bucket/runs DATA=gs://my-bucket/texts/ launch/tpu_vm.sh
set -euo pipefail
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-8}
NAME=${NAME:-jaxchar}
VERSION=${VERSION:-tpu-ubuntu2204-base}
SPOT_FLAG=$([ "${SPOT:-0}" = 1 ] && echo --spot || true)
FLAGS=${FLAGS:-}
BUCKET=${BUCKET:-}
DATA=${DATA:-}

cd "$(dirname "$0")/.."
refuse() { echo "error: $*" >&2; exit 2; }
# gs://bucket[/path]: the bucket's naming rules, and path parts that need no quoting in the
# workers' command line (a DATA glob may also hold '*').
gs_form() {  # location extra_path_characters
  local re="^gs://([a-z0-9][a-z0-9._-]+[a-z0-9])(/[A-Za-z0-9._$2-]+)*/?\$"
  [[ $1 =~ $re ]] && { [ ${#BASH_REMATCH[1]} -le 63 ] || [[ ${BASH_REMATCH[1]} == *.* ]]; }
}
GS_RULES="a bucket name of 3 to 63 lowercase letters, digits, '-', '_' and '.', starting and"
GS_RULES="$GS_RULES ending with a letter or digit; path parts of letters, digits, '-', '_' and '.'"
REGION=${ZONE%-*}

# Refusals that need nothing from the network come first: nothing is created.
if [ -n "$BUCKET" ]; then
  gs_form "$BUCKET" "" ||
    refuse "BUCKET=$BUCKET is not a Cloud Storage location of the form gs://bucket[/path] ($GS_RULES)." \
           "Nothing was created."
  WORKDIR=${BUCKET%/}/moe-tpu
  case " $FLAGS" in *" --workdir="*|*" --workdir "*)
    refuse "FLAGS sets --workdir, but with BUCKET the workdir is $WORKDIR (the script says" \
           "where the results are and resumes from there): set BUCKET instead. Nothing was created." ;;
  esac
elif [ "${SPOT:-0}" = 1 ]; then
  refuse "SPOT=1 needs BUCKET=gs://bucket[/path]: a spot TPU VM is deleted when it is preempted" \
         "(it cannot be restarted, only recreated), and with it the checkpoints it would keep on" \
         "its own disk, so a rerun could not resume. With BUCKET the workdir is \$BUCKET/moe-tpu," \
         "which outlives the VM, and rerunning this script after a preemption recreates the VM" \
         "and resumes from there. Make a bucket in $ZONE's region (gcloud storage buckets create" \
         "gs://NAME --location=$REGION) and rerun with BUCKET=gs://NAME/runs SPOT=1, or drop" \
         "SPOT=1 for an on-demand VM. Nothing was created."
elif [[ ${ACCELERATOR##*-} =~ ^[0-9]+$ ]] && [ "${ACCELERATOR##*-}" -gt 8 ]; then
  refuse "ACCELERATOR=$ACCELERATOR is a slice of several workers (VMs), which share no disk:" \
         "every worker restores from its own --workdir, so with one on the workers' disks only" \
         "worker 0 would hold the checkpoints and a rerun could not resume. Give" \
         "BUCKET=gs://bucket[/path]: the workdir is then \$BUCKET/moe-tpu, which every worker" \
         "reads and writes (make one in $ZONE's region: gcloud storage buckets create gs://NAME" \
         "--location=$REGION). Nothing was created."
fi
CHECK_DATA=""
if [ -n "$DATA" ]; then
  if [[ $DATA == gs://* ]]; then
    gs_form "$DATA" "*" ||
      refuse "DATA=$DATA is not a Cloud Storage location of the form gs://bucket/path ($GS_RULES," \
             "or '*' in a glob). Nothing was created."
  else
    case "$DATA" in /*|..|../*|*/../*|*/..|ckpt|ckpt/*|.venv*|*[!A-Za-z0-9._/*-]*)
      refuse "DATA=$DATA is neither gs://bucket/path nor a path inside this checkout that" \
             "travels to the workers with it (relative, outside ckpt/ and .venv, of letters," \
             "digits, '-', '_', '.', '/' and '*'). Nothing was created." ;;
    esac
    compgen -G "$DATA" >/dev/null ||
      refuse "DATA=$DATA matches nothing in this checkout ($(pwd)). Nothing was created."
    CHECK_DATA="--data=$DATA"
  fi
fi

# Nothing is paid for until the install is known to resolve for the workers' Python and the run
# to compile and fit on $ACCELERATOR.
. launch/python.sh
check_install_resolves "$PYTHON_VERSION" tpu,plot || exit 2
python -m jaxchar.compile_check --topology="$ACCELERATOR" --flagfile=launch/tpu.flags $CHECK_DATA $FLAGS

vm_state() { gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" --format='value(state)' 2>/dev/null || true; }
create() {
  gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$VERSION" $SPOT_FLAG
}
STATE=$(vm_state)
case "$STATE" in
  "") create ;;
  READY) echo "reusing the TPU VM $NAME (READY)" >&2 ;;
  PREEMPTED|TERMINATED)
    if [ -n "$BUCKET" ]; then
      echo "the TPU VM $NAME is $STATE (it cannot be restarted): deleting and recreating it;" \
           "training resumes from $WORKDIR" >&2
    else
      echo "warning: the TPU VM $NAME is $STATE (it cannot be restarted): deleting and" \
           "recreating it; its disk went with it, so training starts afresh (BUCKET=gs://bucket" \
           "keeps the checkpoints outside the VM)" >&2
    fi
    gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
    create ;;
  *) refuse "the TPU VM $NAME in $ZONE is $STATE; rerun when it is READY (start a STOPPED one:" \
            "gcloud compute tpus tpu-vm start $NAME --zone=$ZONE), or delete it (gcloud compute" \
            "tpus tpu-vm delete $NAME --zone=$ZONE) and rerun to create it afresh. Nothing was" \
            "created." ;;
esac
ssh_all() { gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$1"; }

# Copy this checkout (without venvs, data or checkpoints) to every worker, then install.
# A file of this run's own: two launches at once must not overwrite each other's checkout.
STAGED="$(mktemp -d)"
trap 'rm -rf "$STAGED"' EXIT
tar czf "$STAGED/jaxchar.tgz" --exclude='.venv*' --exclude=.cuda-aot --exclude=ckpt \
  --exclude=data/moes_tavern_lines.txt .
gcloud compute tpus tpu-vm scp "$STAGED/jaxchar.tgz" "$NAME":~/jaxchar.tgz --zone="$ZONE" --worker=all
ssh_all "mkdir -p jaxchar && tar xzf jaxchar.tgz -C jaxchar && cd jaxchar &&
  PYTHON_VERSION=$PYTHON_VERSION bash -c '. launch/python.sh && make_venv .venv tpu,plot'"
# Every worker runs the same command; --distributed=on lets JAX find the slice's hosts.
TRAIN="python -m jaxchar.train --flagfile=launch/tpu.flags"
[ -z "$BUCKET" ] || TRAIN="$TRAIN --workdir=$WORKDIR --cache_dir=ckpt/corpus_cache"
[ -z "$DATA" ] || TRAIN="$TRAIN --data='$DATA'"
if ! ssh_all "cd jaxchar && . .venv/bin/activate && $TRAIN${FLAGS:+ $FLAGS}"; then
  STATE=$(vm_state)
  if [ -n "$BUCKET" ]; then
    kept="the checkpoints are in $WORKDIR, and rerunning this same command resumes from them"
    kept="$kept (recreating the VM if it was preempted)"
  else
    kept="the checkpoints are in ~/jaxchar/ckpt/moe-tpu on worker 0, and rerunning this same"
    kept="$kept command resumes from them while the VM exists (a preempted VM has lost them)"
  fi
  echo "error: training on $NAME stopped early (the VM is ${STATE:-gone}): $kept. The VM was" \
       "left as it is; while READY it is billed: delete it with gcloud compute tpus tpu-vm" \
       "delete $NAME --zone=$ZONE." >&2
  exit 1
fi
if [ -n "$BUCKET" ]; then
  # The workers wrote everything to the bucket.
  echo "results: $WORKDIR (checkpoints, metrics.jsonl, samples.md, loss.png, tensorboard/);" \
       "sample from it here with python -m jaxchar.sample --workdir=$WORKDIR (needs" \
       "pip install -e '.[gcs]')"
else
  # Checkpoints, metrics and samples are written by worker 0.
  gcloud compute tpus tpu-vm scp --recurse "$NAME":~/jaxchar/ckpt/moe-tpu ckpt/ --zone="$ZONE" \
    --worker=0
fi
[ "${KEEP:-0}" = 1 ] || gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
