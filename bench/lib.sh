# Shared helpers for the bench scripts. Source it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/bench/out}
mkdir -p "$OUT"
# CLEAVE=path runs that binary instead of building one.
CLEAVE=${CLEAVE:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cleave}

build() { [ "$CLEAVE" != "${CARGO_TARGET_DIR:-$ROOT/target}/release/cleave" ] || (cd "$ROOT" && cargo build --release --quiet -p cleave); }

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

# start_etcd RUN_DIR: one etcd member on loopback, its data in RUN_DIR/etcd; sets ETCD_PORT.
start_etcd() {
  local run=$1 peer
  ETCD_PORT=$(free_port); peer=$(free_port)
  etcd --name bench --data-dir "$run/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" >"$run/etcd.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null && break; sleep 0.1; done
}

# start_gateway RUN_DIR NAME COMMAND ARGS...: `cleave COMMAND` (serve, gateway) with its data
# in RUN_DIR/NAME, NBD, HTTP and autoconfig on free loopback ports, a 2 GiB cache, and ARGS;
# sets NAME_HTTP, NAME_DATA, NAME_PID.
start_gateway() {
  local run=$1 name=$2 cmd=$3 http nbd udp pid; shift 3
  http=$(free_port); nbd=$(free_port); udp=$(free_port)
  CLEAVE_LOG=warn "$CLEAVE" "$cmd" --data-dir "$run/$name" --nbd "127.0.0.1:$nbd" --http "127.0.0.1:$http" \
    --autoconfig "127.0.0.1:$udp" --cache-size 2GiB "$@" >"$run/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do grep -q '^API:' "$run/$name.log" 2>/dev/null && break; sleep 0.1; done
  eval "${name}_HTTP=$http ${name}_DATA=$run/$name ${name}_PID=$pid"
}

# member RUN_DIR NAME: starts gateway NAME of an appliance on start_etcd's etcd (a 3 s lease;
# every member after A gets A's master key).
member() {
  local run=$1 name=$2
  if [ "$name" != A ]; then
    mkdir -p -m 700 "$run/$name"; cp "$run/A/master.key" "$run/$name/master.key"
  fi
  start_gateway "$run" "$name" gateway --etcd "http://127.0.0.1:$ETCD_PORT" --lease-secs 3
}
# on NAME ARGS...: the CLI against gateway NAME.
on() { local n=$1; shift; local http=${n}_HTTP data=${n}_DATA
  CLEAVE_LOG=warn "$CLEAVE" "$@" --server "http://127.0.0.1:${!http}" --token-file "${!data}/admin.token"; }
# uri NAME VOLUME: the volume on gateway NAME's local socket.
uri() { local data=${1}_DATA; echo "nbd+unix:///$2?socket=$(cd "${!data}" && pwd)/nbd.sock"; }
