#!/usr/bin/env bash
# The cost of mirroring, in one run, on loopback: gateways A and B (two `cleave serve`, each
# with five directory targets at 3-of-5 on this disk), the same fio jobs on a volume of A
# unmirrored, mirrored sync to B and mirrored async to B:
#  - sequential 1 MiB writes (QD4) and 4k random writes (QD32): throughput and the ratio to
#    unmirrored (goals: sync 0.7x sequential and 0.6x random, async 0.9x);
#  - the CPU each gateway spends per MiB written (until mirrored and destaged): on one machine
#    both gateways share its cores, and B destages the same data to its own targets;
#  - the initial sync of a volume full of data, against A's destage rate of the same data
#    (goal: 70% of the slower side's destage rate; both sides share one disk here).
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
on B mirror credentials site-a --out "$OUT/mirror/site-a.json" >/dev/null
for v in plain sync async; do on A volume create "$v" --size "${MIB}MiB" >/dev/null; done
for m in sync async; do
  on A mirror create "$m" --peer "$B_MIRROR" --mode "$m" --credentials "$OUT/mirror/site-a.json" >/dev/null
  wait_in_sync "$m"
done

echo "mirroring on loopback, ${MIB} MiB volumes, five directory targets at 3-of-5 on each side"
declare -A SEQ RND
for v in plain sync async; do
  settle
  a0=$(cpu_secs "${PIDS[0]}"); b0=$(cpu_secs "${PIDS[1]}")
  read -r bw _ < <(fio_nbd "$(uri A "$v")" --rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1)
  SEQ[$v]=$bw
  [ "$v" = plain ] || wait_in_sync "$v"
  settle
  a1=$(cpu_secs "${PIDS[0]}"); b1=$(cpu_secs "${PIDS[1]}")
  python3 -c 'import sys; v = sys.argv[1]; m, a0, a1, b0, b1 = map(float, sys.argv[2:])
print(f"  {v}: CPU per MiB written, until mirrored and destaged on both sides: A {(a1 - a0) / m * 1000:.1f} ms, B {(b1 - b0) / m * 1000:.1f} ms")' \
    "$v" "$MIB" "$a0" "$a1" "$b0" "$b1"
  read -r _ iops < <(fio_nbd "$(uri A "$v")" --rw=randwrite --bs=4k --iodepth=32 --size="${MIB}M" \
    --time_based --runtime="$SECS" --randrepeat=0)
  RND[$v]=$iops
  [ "$v" = plain ] || wait_in_sync "$v"
done
python3 - "${SEQ[plain]}" "${SEQ[sync]}" "${SEQ[async]}" "${RND[plain]}" "${RND[sync]}" "${RND[async]}" <<'PY'
import sys
sp, ss, sa, rp, rs, ra = map(float, sys.argv[1:])
print(f"sequential 1 MiB writes: unmirrored {sp:.0f} MB/s; sync {ss:.0f} MB/s, ratio {ss / sp:.2f}; async {sa:.0f} MB/s, ratio {sa / sp:.2f}")
print(f"4k random writes QD32:  unmirrored {rp:.0f} IOPS; sync {rs:.0f} IOPS, ratio {rs / rp:.2f}; async {ra:.0f} IOPS, ratio {ra / rp:.2f}")
PY

# Destage rate of A: random data written to a fresh volume, timed until nothing is dirty.
on A volume create seed --size "${MIB}MiB" >/dev/null
head -c "$((MIB << 20))" /dev/urandom >"$OUT/mirror/seed.img"
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
