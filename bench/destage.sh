#!/usr/bin/env bash
# Destage throughput to five directory targets at 3-of-5 against the physical limit:
# the disk's own sequential write bandwidth x M/N (every byte is written N/M times).
#   bench/destage.sh [GIB]
source "$(dirname "$0")/lib.sh"
GIB=${1:-2}
build
rm -rf "$OUT/destage"; mkdir -p "$OUT/destage"
DATA=$OUT/destage/data

# The disk: sequential 1 MiB writes with an fsync at the end, on the same filesystem.
disk=$(fio --output-format=json --name=disk --filename="$OUT/destage/disk.test" --rw=write --bs=1M \
  --size="${GIB}G" --ioengine=psync --end_fsync=1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6)')
rm -f "$OUT/destage/disk.test"

start_cleave "$DATA" --cache-size "$((GIB + 1))GiB"
trap stop_cleave EXIT
cli volume create bench --size "$((GIB + 1))GiB" >/dev/null
fio --ioengine=nbd --uri="$(local_uri bench)" --name=fill --rw=write --bs=1M --iodepth=8 \
  --size="${GIB}G" --refill_buffers=1 --output=/dev/null
start=$(date +%s.%N)
dirty=$(cli --json volume show bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])')
curl -sf -X POST -H "Authorization: Bearer $(cat "$DATA/admin.token")" \
  "http://127.0.0.1:$HTTP_PORT/api/v1/volumes/bench/destage" >/dev/null
end=$(date +%s.%N)
python3 - "$disk" "$dirty" "$start" "$end" <<'PY'
import sys
disk, dirty, start, end = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rate = dirty / 1e6 / (end - start)
limit = disk * 3 / 5
print(f"disk sequential write: {disk:.0f} MB/s; physical limit at 3-of-5: {limit:.0f} MB/s")
print(f"destage: {dirty/1e6:.0f} MB of dirty chunks in {end-start:.1f} s = {rate:.0f} MB/s of volume data")
print(f"ratio to the limit: {rate/limit:.2f}")
PY
