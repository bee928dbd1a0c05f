#!/usr/bin/env bash
# S3 at speed: Cleave over five buckets (3-of-5) of one s3s-fs server on loopback, beside
# the same client library (object_store, built as Cleave builds it) doing plain puts and
# gets of the same share bytes with the same parallelism, in one run.
#   bench/s3.sh [MIB]        (default 256: bounded for CI)
# PERF=1 records the gateway with `perf record -g` while it destages and reads cold
# (bench/out/s3/*.perf). Needs s3s-fs (.ci/run installs it under .ci/s3s-fs; or on PATH), fio and python3.
source "$(dirname "$0")/lib.sh"
MIB=${1:-256}
# The destager stores this many chunks at once (VolumeOptions::destage_parallel), each as N
# parallel puts; the cold read below keeps this many 1 MiB reads in flight, each M gets.
PUT_PARALLEL=${PUT_PARALLEL:-4}
READ_DEPTH=${READ_DEPTH:-8}
S3S=$(command -v s3s-fs || echo "$ROOT/.ci/s3s-fs/bin/s3s-fs")
[[ -x $S3S ]] || { echo "s3s-fs not found: cargo install s3s-fs --version 0.14.1 --locked --root .ci/s3s-fs"; exit 1; }
build
(cd "$ROOT" && cargo build --release --quiet -p cleave-target --example s3_reference)
REFERENCE=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/s3_reference
CLEAVE=${CARGO_TARGET_DIR:-$ROOT/target}/release/cleave
rm -rf "$OUT/s3"; mkdir -p "$OUT/s3/fs"
DATA=$OUT/s3/data
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1

S3_PORT=$(free_port)
ENDPOINT=http://127.0.0.1:$S3_PORT
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$OUT/s3/fs" >"$OUT/s3/s3s.log" 2>&1 &
S3S_PID=$!
CLEAVE_PID=
trap 'stop_cleave; kill $S3S_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "$ENDPOINT" && break; sleep 0.1; done
BUCKETS=(cleave0 cleave1 cleave2 cleave3 cleave4)
# s3s-fs serves each top-level directory as a bucket.
for b in "${BUCKETS[@]}"; do mkdir -p "$OUT/s3/fs/$b"; done

# Cleave: write MIB through NBD, time the destage of what is dirty, then read it back cold.
start_cleave "$DATA" --cache-size "$((MIB * 2))MiB"
targets=()
for b in "${BUCKETS[@]}"; do targets+=(--target "s3://$b/bench?endpoint=$ENDPOINT&region=us-east-1"); done
cli volume create bench --size "$((MIB * 2))MiB" --m 3 "${targets[@]}" >/dev/null
fio --ioengine=nbd --uri="$(local_uri bench)" --name=fill --rw=write --bs=1M --iodepth=8 \
  --size="${MIB}M" --refill_buffers=1 --output=/dev/null
dirty=$(cli --json volume show bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])')
profile() { [[ -z ${PERF:-} ]] || { perf record -g -o "$OUT/s3/$1.perf" -p "$CLEAVE_PID" 2>/dev/null & PERF_PID=$!; }; }
unprofile() { [[ -z ${PERF:-} ]] || { kill -INT "$PERF_PID"; wait "$PERF_PID" || true; }; }
profile destage
start=$(date +%s.%N)
curl -sf -X POST -H "Authorization: Bearer $(cat "$DATA/admin.token")" \
  "http://127.0.0.1:$HTTP_PORT/api/v1/volumes/bench/destage" >/dev/null
end=$(date +%s.%N)
unprofile
destage=$(python3 -c "print($dirty / 1e6 / ($end - $start))")

# Cold: the cache emptied (its files removed while stopped, as the gateway tests do).
stop_cleave
find "$DATA/cache" -type f -delete
start_cleave "$DATA" --cache-size "$((MIB * 2))MiB"
profile cold-read
read -r cold _ < <(fio_nbd "$(local_uri bench)" --rw=read --bs=1M --iodepth="$READ_DEPTH" --size="${MIB}M")
unprofile
stop_cleave

# The shares Cleave stored (keys are opaque: the most common size, chunks outnumber the
# journal): the reference puts and gets objects of that size.
share=$(find "$OUT/s3/fs/cleave0/bench" -type f -printf '%s\n' | sort -n | uniq -c | sort -rn |
  awk 'NR == 1 {print $2}')
ref=$("$REFERENCE" --endpoint "$ENDPOINT" --buckets "$(IFS=,; echo "${BUCKETS[*]}")" --chunks "$MIB" \
  --share-size "$share" --m 3 --put-parallel "$PUT_PARALLEL" --get-parallel "$READ_DEPTH")

python3 - "$MIB" "$share" "$dirty" "$destage" "$cold" "$ref" <<'PY'
import json, sys
mib, share, dirty = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
destage, cold, ref = float(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
print(f"s3s-fs on loopback, five buckets, 3-of-5, {mib} MiB of 1 MiB chunks, shares of {share} bytes")
print("MB/s of volume data         plain client   cleave   ratio")
print(f"  put (destage of {dirty/1e6:.0f} MB)      {ref['put_mbps']:9.0f} {destage:8.0f} {destage/ref['put_mbps']:7.2f}")
print(f"  get (cold read)             {ref['get_mbps']:9.0f} {cold:8.0f} {cold/ref['get_mbps']:7.2f}")
PY
