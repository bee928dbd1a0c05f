#!/usr/bin/env bash
# The cost of I/O forwarding in an appliance, in one run, on loopback: one etcd, gateways A
# and B (`cleave gateway --etcd`, a 3 s lease), a volume on five directory targets at 3-of-5
# whose primary is A. The same fio jobs on A's local socket (direct) and on B's (every
# request forwarded to A over TLS), and the ratio (goal: 0.6x direct). Both gateways, etcd
# and fio share this machine's cores: forwarding adds a second gateway's work to each request.
# SEPARATE_CORES=1 keeps A and fio on CPU 0 and B on CPU 1, as if B had a machine of its own;
# HOST_CORE=1 with it puts fio on CPU 1 instead, beside B: A then has a core of its own, as
# the host does when A serves it directly.
#  - sequential 1 MiB writes and reads (QD4);
#  - 4k random writes and reads (QD32), time-based.
#   bench/forward.sh [MIB] [RANDOM_SECONDS]
source "$(dirname "$0")/lib.sh"
MIB=${1:-512}
SECS=${2:-15}
build
fresh_run forward

start_etcd "$OUT/forward"
dirty() { on A volume show v --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])'; }
# Nothing left to destage: each job starts on a quiet gateway.
settle() { for _ in $(seq 6000); do [ "$(dirty)" = 0 ] && return; sleep 0.1; done; }

member "$OUT/forward" A
on A volume create v --size "${MIB}MiB" >/dev/null
member "$OUT/forward" B
for _ in $(seq 100); do on B volume show v >/dev/null 2>&1 && break; sleep 0.1; done
FIO_CPUS=()
if [ -n "${SEPARATE_CORES:-}" ]; then
  taskset -a -p -c 0 "$A_PID" >/dev/null; taskset -a -p -c 1 "$B_PID" >/dev/null
  FIO_CPUS=(--cpus_allowed="${HOST_CORE:-0}")
fi

echo "I/O forwarding on loopback: a ${MIB} MiB volume served by gateway A, five directory targets at 3-of-5${SEPARATE_CORES:+; A on CPU 0, B on CPU 1, fio on CPU ${HOST_CORE:-0}}"
printf '%-28s %14s %14s %7s\n' job "direct (A)" "forwarded (B)" ratio
# measure SIDE UNIT FIO_ARGS...: the job's MB/s or IOPS through SIDE's socket.
measure() {
  local side=$1 unit=$2; shift 2
  settle
  read -r bw iops < <(fio_nbd "$(uri "$side" v)" "$@" "${FIO_CPUS[@]}")
  [ "$unit" = MB/s ] && echo "$bw" || echo "$iops"
}
# Each job runs direct, forwarded, forwarded, direct: the mean of each side, so that drift
# over the run weighs on both alike.
job() {
  local label=$1 unit=$2; shift 2
  local d1 f1 f2 d2
  d1=$(measure A "$unit" "$@"); f1=$(measure B "$unit" "$@"); f2=$(measure B "$unit" "$@"); d2=$(measure A "$unit" "$@")
  python3 -c "
d, f = ($d1 + $d2) / 2, ($f1 + $f2) / 2
print(f'{\"$label\":<28} {d:9.1f} {\"$unit\":<4} {f:9.1f} {\"$unit\":<4} {f / d:6.2f}x')"
}
# Every block written once first: no job pays for first writes.
fio_nbd "$(uri A v)" --rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1 "${FIO_CPUS[@]}" >/dev/null
job "sequential 1 MiB write QD4" MB/s --rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1
job "sequential 1 MiB read QD4" MB/s --rw=read --bs=1M --iodepth=4 --size="${MIB}M"
job "4k random write QD32" IOPS --rw=randwrite --bs=4k --iodepth=32 --size="${MIB}M" --time_based --runtime="$SECS"
job "4k random read QD32" IOPS --rw=randread --bs=4k --iodepth=32 --size="${MIB}M" --time_based --runtime="$SECS"
