#!/usr/bin/env bash
# Cold reads, in one run: Cleave with its cache emptied (and restarted), reading a volume from
# five directory targets at 3-of-5, against `nbdkit file` on a file of the same bytes on the
# same disk.
#  - sequential: the whole volume copied to null: by nbdcopy in 1 MiB requests (its default
#    connections and requests in flight, the same for both); both times and the ratio;
#  - 4k random: one read at a time (qemu-io), each in a chunk not read before, so every one goes
#    to the targets; against the targets' own get latency: the time to read the M share files
#    of a random chunk straight from the target directories, M in parallel (what one chunk get
#    of Cleave's needs at least), in Python threads.
# PAGE_CACHE=drop (default, needs root) empties the kernel's page cache before each measurement,
# so both sides read from the disk; PAGE_CACHE=keep leaves it (both read from memory).
#   bench/cold-read.sh [GIB] [RANDOM_READS]
source "$(dirname "$0")/lib.sh"
GIB=${1:-1}
READS=${2:-300}
PAGE_CACHE=${PAGE_CACHE:-drop}
build
rm -rf "$OUT/cold"; mkdir -p "$OUT/cold"
DATA=$OUT/cold/data
REF=$OUT/cold/ref.img
KIT_PID=
trap 'stop_cleave; [ -n "$KIT_PID" ] && kill "$KIT_PID" 2>/dev/null || true' EXIT

if [ "$PAGE_CACHE" = drop ] && ! { sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
  echo "cannot drop the page cache (not root?): measuring with PAGE_CACHE=keep"
  PAGE_CACHE=keep
fi
drop_page_cache() { if [ "$PAGE_CACHE" = drop ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }
now() { date +%s.%N; }

# The data: random bytes, written through Cleave and destaged by a clean stop.
head -c "$((GIB << 30))" /dev/urandom >"$REF"
start_cleave "$DATA" --cache-size "$((2 * GIB))GiB"
cli volume create bench --size "${GIB}GiB" >/dev/null
CLEAVE_URI=$(local_uri bench)
nbdcopy "$REF" "$CLEAVE_URI"
stop_cleave

# cold_start: Cleave started again with its cache emptied.
cold_start() {
  rm -rf "$DATA/cache"
  drop_page_cache
  start_cleave "$DATA" --cache-size "$((2 * GIB))GiB"
}

nbdkit --exit-with-parent -f -U "$OUT/cold/kit.sock" file "$REF" &
KIT_PID=$!
sleep 1
KIT_URI="nbd+unix:///?socket=$OUT/cold/kit.sock"

echo "cold reads of a ${GIB} GiB volume, five directory targets at 3-of-5, page cache: $PAGE_CACHE"
cold_start
t0=$(now); nbdcopy --request-size=1048576 "$CLEAVE_URI" null:; t1=$(now)
# The bytes read back are the bytes written (from Cleave's cache, warm now).
nbdcopy "$CLEAVE_URI" - | cmp - "$REF" || { echo "cleave read back other bytes"; exit 1; }
stop_cleave
drop_page_cache
k0=$(now); nbdcopy --request-size=1048576 "$KIT_URI" null:; k1=$(now)
python3 - "$GIB" "$t0" "$t1" "$k0" "$k1" <<'PY'
import sys
gib, t0, t1, k0, k1 = int(sys.argv[1]), *map(float, sys.argv[2:])
size = gib * 2**30 / 1e6
c, k = t1 - t0, k1 - k0
print(f"sequential (nbdcopy to null:): cleave {c:.2f} s = {size / c:.0f} MB/s; "
      f"nbdkit file {k:.2f} s = {size / k:.0f} MB/s; ratio {k / c:.2f}")
PY

# 4k random reads, one chunk each, in random order.
python3 -c "
import random
chunks = random.sample(range($GIB * 1024), min($READS, $GIB * 1024))
for c in chunks: print(f\"-c 'read {c * 2**20 + random.randrange(256) * 4096} 4k'\")" >"$OUT/cold/reads"
cold_start
eval "qemu-io --image-opts driver=nbd,path=$DATA/nbd.sock,export=bench $(tr '\n' ' ' <"$OUT/cold/reads")" \
  >"$OUT/cold/qemu-io.out"
metrics=$(curl -sf -H "Authorization: Bearer $(cat "$DATA/admin.token")" "http://127.0.0.1:$HTTP_PORT/metrics")
stop_cleave
drop_page_cache
python3 - "$DATA/targets" "$READS" "$OUT/cold/qemu-io.out" "$metrics" <<'PY'
import os, random, re, sys, time
from concurrent.futures import ThreadPoolExecutor
targets, reads, out, metrics = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
# Cleave: qemu-io prints each read's rate; one op per read, so latency = 1 / ops per second.
ops = [float(x) for x in re.findall(r"and ([0-9.]+) ops/sec", open(out).read())]
cleave = sum(1 / o for o in ops) / len(ops)
def counter(name):
    m = re.search(rf"^{name}(?:_total)?{{[^}}]*}} ([0-9.e+]+)", metrics, re.M)
    return float(m.group(1)) if m else float("nan")
hits, misses = counter("cleave_volume_cache_hits"), counter("cleave_volume_cache_misses")
# The targets: M = 3 share files of a chunk read in parallel, straight from the directories.
# The bench volume is the one with the most chunk objects (`demo` holds next to none).
t0 = os.path.join(targets, "t0")
uuid = max((d for d in os.listdir(t0) if os.path.isdir(os.path.join(t0, d, "d"))),
           key=lambda d: len(os.listdir(os.path.join(t0, d, "d"))))
names = os.listdir(os.path.join(t0, uuid, "d"))
pool = ThreadPoolExecutor(3)
def get(path):
    with open(path, "rb") as f:
        return len(f.read())
took = []
for name in random.sample(names, min(reads, len(names))):
    paths = [os.path.join(targets, f"t{i}", uuid, "d", name) for i in range(3)]
    start = time.perf_counter()
    list(pool.map(get, paths))
    took.append(time.perf_counter() - start)
share = sum(took) / len(took)
print(f"4k random, one at a time ({len(ops)} reads, each in a chunk not read before; "
      f"cache hits {hits:.0f}, misses {misses:.0f}): cleave {cleave * 1e3:.2f} ms mean; "
      f"targets' get of the 3 shares of a chunk {share * 1e3:.2f} ms mean; ratio {cleave / share:.2f}")
PY
