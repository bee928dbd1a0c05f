#!/usr/bin/env bash
# The cost of mirroring, in one run, on loopback: gateways A and B (two `cleave serve`, each
# with five directory targets at 3-of-5 on this disk), the same fio jobs on a volume of A
# unmirrored, mirrored sync to B and mirrored async to B:
#  - sequential 1 MiB writes (QD4) and 4k random writes (QD32): throughput and the ratio to
#    unmirrored (goals: sync 0.7x sequential and 0.6x random, async 0.9x). Each job runs
#    plain, sync, async, async, sync, plain, each once neither gateway has anything left to
#    destage, and each side is the mean of its two runs, so that drift weighs on all alike;
#  - the CPU each gateway spends per MiB written (until mirrored and destaged): on one machine
#    both gateways share its cores, and B destages the same data to its own targets;
#  - the initial sync of a volume full of data, against A's destage rate of the same data
#    (goal: 70% of the slower side's destage rate; both sides share one disk here).
# Every volume is written once before it is mirrored, so that no job pays for first writes
# into either cache (on a VM, pages the guest has not touched lately cost several times more).
# SEPARATE_CORES=1 keeps A and fio on CPU 0 and B on CPU 1, as if B had a machine of its own.
#   bench/mirror.sh [MIB] [RANDOM_SECONDS]
source "$(dirname "$0")/lib.sh"
MIB=${1:-512}
SECS=${2:-15}
build
fresh_run mirror

# gateway NAME: starts one (`cleave serve` with a mirror listener); sets NAME_HTTP,
# NAME_MIRROR, NAME_DATA.
gateway() {
  local mirror; mirror=$(free_port)
  start_gateway "$OUT/mirror" "$1" serve --mirror-listen "127.0.0.1:$mirror"
  eval "${1}_MIRROR=127.0.0.1:$mirror"
}
state() { on A mirror show "$1" --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["state"], v["lag_bytes"])'; }
wait_in_sync() { for _ in $(seq 6000); do [ "$(state "$1")" = "in-sync 0" ] && return 0; sleep 0.1; done; echo "$1 never in sync"; exit 1; }
dirty() { on A volume show "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])'; }
# Both sides with nothing left to destage: each run starts on a quiet machine.
all_dirty() { on "$1" volume list --json | python3 -c 'import json,sys; print(sum(v["dirty_bytes"] for v in json.load(sys.stdin)))'; }
settle() { for s in A B; do for _ in $(seq 6000); do [ "$(all_dirty $s)" = 0 ] && break; sleep 0.1; done; done; }
now() { date +%s.%N; }
# CPU seconds (user and system, every thread) a process has used.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

gateway A; gateway B
FIO_CPUS=()
if [ -n "${SEPARATE_CORES:-}" ]; then
  taskset -a -p -c 0 "$A_PID" >/dev/null; taskset -a -p -c 1 "$B_PID" >/dev/null
  FIO_CPUS=(--cpus_allowed=0)
fi
on B mirror credentials site-a --out "$OUT/mirror/site-a.json" >/dev/null
for v in plain sync async; do
  on A volume create "$v" --size "${MIB}MiB" >/dev/null
  fio_nbd "$(uri A "$v")" --rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1 "${FIO_CPUS[@]}" >/dev/null
done
for m in sync async; do
  on A mirror create "$m" --peer "$B_MIRROR" --mode "$m" --credentials "$OUT/mirror/site-a.json" >/dev/null
  wait_in_sync "$m"
done

# run VOLUME UNIT FIO_ARGS...: one run on a quiet machine; prints the MB/s or IOPS.
run() {
  local v=$1 unit=$2 bw iops; shift 2
  settle
  read -r bw iops < <(fio_nbd "$(uri A "$v")" "$@" "${FIO_CPUS[@]}")
  [ "$v" = plain ] || wait_in_sync "$v"
  [ "$unit" = MB/s ] && echo "$bw" || echo "$iops"
}
# job LABEL UNIT FIO_ARGS...: plain, sync, async, async, sync, plain; the means and ratios.
job() {
  local label=$1 unit=$2 v; shift 2
  declare -A got
  for v in plain sync async; do got[$v]=$(run "$v" "$unit" "$@"); done
  for v in async sync plain; do got[$v]="${got[$v]} $(run "$v" "$unit" "$@")"; done
  python3 - "$label" "$unit" "${got[plain]}" "${got[sync]}" "${got[async]}" <<'PY'
import sys
label, unit = sys.argv[1:3]
p, s, a = (sum(map(float, x.split())) / 2 for x in sys.argv[3:6])
runs = " / ".join(sys.argv[3:6])
print(f"{label}: unmirrored {p:.0f} {unit}; sync {s:.0f} {unit}, ratio {s / p:.2f}; "
      f"async {a:.0f} {unit}, ratio {a / p:.2f}  (runs: {runs})")
PY
}

echo "mirroring on loopback, ${MIB} MiB volumes, five directory targets at 3-of-5 on each side${SEPARATE_CORES:+; A and fio on CPU 0, B on CPU 1}"
for v in plain sync async; do
  settle
  a0=$(cpu_secs "$A_PID"); b0=$(cpu_secs "$B_PID")
  run "$v" MB/s --rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1 >/dev/null
  settle
  a1=$(cpu_secs "$A_PID"); b1=$(cpu_secs "$B_PID")
  python3 -c 'import sys; v = sys.argv[1]; m, a0, a1, b0, b1 = map(float, sys.argv[2:])
print(f"  {v}: CPU per MiB written, until mirrored and destaged on both sides: A {(a1 - a0) / m * 1000:.1f} ms, B {(b1 - b0) / m * 1000:.1f} ms")' \
    "$v" "$MIB" "$a0" "$a1" "$b0" "$b1"
done
job "sequential 1 MiB writes QD4" MB/s --rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1
job "4k random writes QD32" IOPS --rw=randwrite --bs=4k --iodepth=32 --size="${MIB}M" \
  --time_based --runtime="$SECS" --randrepeat=0

# Destage rate of A: random data written to a fresh volume, timed until nothing is dirty.
on A volume create seed --size "${MIB}MiB" >/dev/null
head -c "$((MIB << 20))" /dev/urandom >"$OUT/mirror/seed.img"
settle
t0=$(now); nbdcopy "$OUT/mirror/seed.img" "$(uri A seed)"
for _ in $(seq 60000); do [ "$(dirty seed)" = 0 ] && break; sleep 0.05; done; t1=$(now)
# The initial sync of that volume to B.
s0=$(now); on A mirror create seed --peer "$B_MIRROR" --mode async >/dev/null; wait_in_sync seed; s1=$(now)
nbdcopy "$(uri B seed)" - | cmp - "$OUT/mirror/seed.img" || { echo "the mirror holds other bytes"; exit 1; }
python3 - "$MIB" "$t0" "$t1" "$s0" "$s1" <<'PY'
import sys
mib, t0, t1, s0, s1 = int(sys.argv[1]), *map(float, sys.argv[2:])
d, s = mib / (t1 - t0), mib / (s1 - s0)
print(f"initial sync: {s:.0f} MiB/s; A's write-and-destage rate {d:.0f} MiB/s; ratio {s / d:.2f}")
PY
