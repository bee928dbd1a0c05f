#!/usr/bin/env bash
# What a standby cache saves in an appliance, in one run, on loopback: one etcd, gateway A
# (`cleave gateway --etcd`, a 3 s lease) serving a `local` volume on five directory targets
# at 3-of-5. Alone in the appliance, A acknowledges a FLUSH once the targets hold the data;
# once gateway B joins, B keeps A's changes in its standby log and a FLUSH is acknowledged
# from the two caches. The same fio jobs without a standby (A alone), with B as the standby,
# and without again (B stopped), and the ratio with / without:
#  - 4 KiB random writes, each followed by a FLUSH (QD1), time-based;
#  - sequential 1 MiB writes (QD4), a FLUSH at the end: what sending every change to B costs.
#   bench/standby.sh [MIB] [SECONDS]
source "$(dirname "$0")/lib.sh"
MIB=${1:-256}
SECS=${2:-10}
build
fresh_run standby
RUN=$OUT/standby

start_etcd "$RUN"
member "$RUN" A
on A volume create v --size "${MIB}MiB" >/dev/null
standby() { on A volume show v --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("standby") or "")'; }
dirty() { on A volume show v --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])'; }
settle() { for _ in $(seq 6000); do [ "$(dirty)" = 0 ] && return; sleep 0.1; done; }
# Every block written once first: no job pays for first writes.
fio_nbd "$(uri A v)" --rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1 >/dev/null

flushed=(--rw=randwrite --bs=4k --iodepth=1 --fsync=1 --size="${MIB}M" --time_based --runtime="$SECS")
sequential=(--rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1)
# run LABEL: both jobs on A's socket; prints "IOPS MB/s".
run() {
  settle; read -r _ iops < <(fio_nbd "$(uri A v)" "${flushed[@]}")
  settle; read -r bw _ < <(fio_nbd "$(uri A v)" "${sequential[@]}")
  echo "$iops $bw"
}
read -r alone1_iops alone1_bw < <(run)
member "$RUN" B
for _ in $(seq 600); do [ -n "$(standby)" ] && break; sleep 0.1; done
[ -n "$(standby)" ] || { echo "no standby became ready"; exit 1; }
read -r with_iops with_bw < <(run)
kill -TERM "$B_PID"; wait "$B_PID" 2>/dev/null || true
for _ in $(seq 600); do [ -z "$(standby)" ] && break; sleep 0.1; done
read -r alone2_iops alone2_bw < <(run)

echo "Standby cache on loopback: a ${MIB} MiB local volume served by gateway A, five directory targets at 3-of-5"
python3 -c "
a_iops, a_bw = ($alone1_iops + $alone2_iops) / 2, ($alone1_bw + $alone2_bw) / 2
print(f'{\"job\":<36} {\"A alone\":>12} {\"standby on B\":>14} {\"ratio\":>7}')
print(f'{\"4 KiB write + FLUSH, QD1\":<36} {a_iops:7.0f} IOPS {$with_iops:9.0f} IOPS {$with_iops / a_iops:6.2f}x')
print(f'{\"sequential 1 MiB write QD4\":<36} {a_bw:7.1f} MB/s {$with_bw:9.1f} MB/s {$with_bw / a_bw:6.2f}x')
print(f'(A alone, before and after: {$alone1_iops} and {$alone2_iops} IOPS, {$alone1_bw} and {$alone2_bw} MB/s)')"
