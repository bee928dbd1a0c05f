#!/usr/bin/env bash
# Metadata cost of a large sparse volume: WRITES scattered 1 MiB writes (each to another
# chunk) on a volume of each SIZE, through NBD into `cleave serve` (five directory
# targets, 3-of-5, 1 GiB cache). Prints, per size:
#   - bytes of metadata stored on the targets per byte of chunk data (the gateway's own
#     cleave_volume_stored_bytes counters: journal records, checkpoints, map pages);
#   - the gateway's peak memory (VmHWM);
#   - how long until the volume is served again after a clean stop and after kill -9.
# The figures should not grow with the volume's size.
#   bench/metadata.sh [WRITES] [SIZES...]        e.g. bench/metadata.sh 2000 1TiB 16TiB
# With DROP_DATA=1 the chunk shares are deleted from the targets as the run goes (the
# metadata is untouched), so that more data than the disk holds can be written: 100,000
# MiB at 3-of-5 store 167 GB of shares. The volume's data is then lost: only a bench.
source "$(dirname "$0")/lib.sh"
WRITES=${1:-2000}
shift || true
SIZES=("$@")
((${#SIZES[@]})) || SIZES=(1TiB 16TiB)
build
PY=/usr/bin/python3

# served_after START_NS: seconds from START_NS until the volume answers over NBD.
served_after() {
  for _ in $(seq 3000); do
    nbdinfo --size "$(local_uri meta)" >/dev/null 2>&1 && break
    sleep 0.01
  done
  echo "$(( $(date +%s%N) - $1 ))" | awk '{printf "%.2f", $1 / 1e9}'
}

stored() {
  curl -sf -H "Authorization: Bearer $(cat "$DATA/admin.token")" "http://127.0.0.1:$HTTP_PORT/metrics" |
    awk -v kind="$1" '$1 == "cleave_volume_stored_bytes_total{volume=\"meta\",kind=\""kind"\"}" {print $2}'
}

drop_data() {
  [[ ${DROP_DATA:-0} == 1 ]] || return 0
  find "$DATA/targets" -path '*/d/*' -type f -delete 2>/dev/null || true
}

for size in "${SIZES[@]}"; do
  rm -rf "$OUT/metadata"; mkdir -p "$OUT/metadata"
  DATA=$OUT/metadata/data
  start_cleave "$DATA" --cache-size 1GiB
  cli volume create meta --size "$size" >/dev/null
  # Scattered writes, each to a chunk of its own, in batches (flushed, destaged).
  "$PY" - "$(local_uri meta)" "$WRITES" <<'PY' &
import os, random, sys, nbd
uri, writes = sys.argv[1], int(sys.argv[2])
h = nbd.NBD(); h.connect_uri(uri)
chunks = h.get_size() // (1 << 20)
rng = random.Random(42)
picked = rng.sample(range(chunks), writes) if chunks < 10 * writes else None
seen = set()
buf = bytearray(os.urandom(1 << 20))
for i in range(writes):
    if picked is not None:
        c = picked[i]
    else:
        c = rng.randrange(chunks)
        while c in seen:
            c = rng.randrange(chunks)
        seen.add(c)
    buf[:8] = i.to_bytes(8, "little")
    h.pwrite(bytes(buf), c << 20)
    if i % 1000 == 999:
        h.flush()
h.flush()
h.shutdown()
PY
  writer=$!
  while kill -0 "$writer" 2>/dev/null; do drop_data; sleep 5; done
  wait "$writer"
  curl -sf -X POST -H "Authorization: Bearer $(cat "$DATA/admin.token")" \
    "http://127.0.0.1:$HTTP_PORT/api/v1/volumes/meta/destage" >/dev/null
  drop_data
  data=$(stored data); meta=$(stored metadata)
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$CLEAVE_PID/status")

  stop_cleave
  t0=$(date +%s%N); start_cleave "$DATA" --cache-size 1GiB; clean=$(served_after "$t0")
  kill -9 "$CLEAVE_PID"; wait "$CLEAVE_PID" 2>/dev/null || true
  t0=$(date +%s%N); start_cleave "$DATA" --cache-size 1GiB; unclean=$(served_after "$t0")
  hwm2=$(awk '/VmHWM/ {print $2}' "/proc/$CLEAVE_PID/status")
  stop_cleave
  meta_on_targets=$(du -sb --exclude=d "$DATA"/targets/t0 | cut -f1)
  "$PY" - "$size" "$WRITES" "$data" "$meta" "$hwm" "$hwm2" "$clean" "$unclean" "$meta_on_targets" <<'PY'
import sys
size, writes = sys.argv[1], int(sys.argv[2])
data, meta = float(sys.argv[3]), float(sys.argv[4])
hwm, hwm2 = int(sys.argv[5]) // 1024, int(sys.argv[6]) // 1024
clean, unclean, kept = float(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
print(f"{size}: {writes} scattered 1 MiB writes; {data/1e9:.1f} GB of chunk shares stored")
print(f"  metadata stored: {meta/1e6:.1f} MB = {100*meta/data:.3f}% of the chunk data (goal <= 1%)")
print(f"  gateway peak memory: {hwm} MiB while writing, {hwm2} MiB after reopening (goal <= 512 MiB)")
print(f"  served again after a clean stop: {clean:.2f} s; after kill -9: {unclean:.2f} s (goal <= 5 s)")
print(f"  one target's objects other than chunk shares at the end: {kept/1e6:.2f} MB")
PY
done
