# Shared helpers for the bench scripts. Source it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/bench/out}
mkdir -p "$OUT"
CLEAVE=${CARGO_TARGET_DIR:-$ROOT/target}/release/cleave

build() { (cd "$ROOT" && cargo build --release --quiet -p cleave); }

# fresh_run NAME: an empty $OUT/NAME, and every process added to PIDS stopped on exit.
fresh_run() {
  rm -rf "${OUT:?}/$1"; mkdir -p "$OUT/$1"
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null || true' EXIT
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_cleave DATA_DIR [serve args...]: sets CLEAVE_PID, NBD_PORT, HTTP_PORT.
start_cleave() {
  local data=$1; shift
  NBD_PORT=$(free_port); HTTP_PORT=$(free_port); UDP_PORT=$(free_port)
  CLEAVE_LOG=warn "$CLEAVE" serve --data-dir "$data" --nbd "127.0.0.1:$NBD_PORT" --http "127.0.0.1:$HTTP_PORT" \
    --autoconfig "127.0.0.1:$UDP_PORT" "$@" \
    >"$OUT/serve.log" 2>&1 &
  CLEAVE_PID=$!
  for _ in $(seq 600); do grep -q '^API:' "$OUT/serve.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "cleave serve did not start:"; cat "$OUT/serve.log"; exit 1
}

# local_uri VOLUME: the volume on the local administrator's Unix socket in $DATA.
local_uri() { echo "nbd+unix:///$1?socket=$(cd "$DATA" && pwd)/nbd.sock"; }

stop_cleave() { kill -TERM "$CLEAVE_PID" 2>/dev/null && wait "$CLEAVE_PID" 2>/dev/null || true; }

cli() { CLEAVE_LOG=warn "$CLEAVE" "$@" --server "http://127.0.0.1:$HTTP_PORT" --token-file "$DATA/admin.token"; }

# fio_json NAME URI ARGS...: prints "bw_MBps iops" of the job.
fio_nbd() {
  local uri=$1; shift
  fio --output-format=json --ioengine=nbd --uri="$uri" --name=job "$@" | python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):])["jobs"][0]
r, w = j["read"], j["write"]
bw = (r["bw_bytes"] + w["bw_bytes"]) / 1e6
iops = r["iops"] + w["iops"]
print(f"{bw:.1f} {iops:.0f}")'
}
