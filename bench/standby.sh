#!/usr/bin/env bash
# What a standby cache costs and saves, in one run, on loopback. A standalone gateway S
# (`cleave serve`, no etcd) and gateway A of an appliance (one etcd, a 3 s lease) each serve a
# `local` volume on five directory targets at 3-of-5. Alone in the appliance, A acknowledges
# a FLUSH once the targets hold the data; once gateway B joins, B keeps A's changes in its
# standby log and a FLUSH is acknowledged from the two caches. The same fio jobs on S, on A
# alone, on A with B as its standby, on A alone again (B stopped) and on S again; the ratios
# of A with a standby to S (goal: 0.7) and to A alone:
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
start_gateway "$RUN" S serve
member "$RUN" A
for g in S A; do on $g volume create v --size "${MIB}MiB" >/dev/null; done
standby() { on A volume show v --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("standby") or "")'; }
dirty() { on "$1" volume show v --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])'; }
settle() { for _ in $(seq 6000); do [ "$(dirty "$1")" = 0 ] && return; sleep 0.1; done; }
# Every block written once first: no job pays for first writes.
for g in S A; do fio_nbd "$(uri $g v)" --rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1 >/dev/null; done

flushed=(--rw=randwrite --bs=4k --iodepth=1 --fsync=1 --size="${MIB}M" --time_based --runtime="$SECS")
sequential=(--rw=write --bs=1M --iodepth=4 --size="${MIB}M" --end_fsync=1)
# run GATEWAY: both jobs on its socket; prints "IOPS MB/s".
run() {
  settle "$1"; read -r _ iops < <(fio_nbd "$(uri "$1" v)" "${flushed[@]}")
  settle "$1"; read -r bw _ < <(fio_nbd "$(uri "$1" v)" "${sequential[@]}")
  echo "$iops $bw"
}
read -r s1_iops s1_bw < <(run S)
read -r alone1_iops alone1_bw < <(run A)
member "$RUN" B
for _ in $(seq 600); do [ -n "$(standby)" ] && break; sleep 0.1; done
[ -n "$(standby)" ] || { echo "no standby became ready"; exit 1; }
read -r with_iops with_bw < <(run A)
kill -TERM "$B_PID"; wait "$B_PID" 2>/dev/null || true
for _ in $(seq 600); do [ -z "$(standby)" ] && break; sleep 0.1; done
read -r alone2_iops alone2_bw < <(run A)
read -r s2_iops s2_bw < <(run S)

echo "Standby cache on loopback: a ${MIB} MiB local volume, five directory targets at 3-of-5"
python3 -c "
s_iops, s_bw = ($s1_iops + $s2_iops) / 2, ($s1_bw + $s2_bw) / 2
a_iops, a_bw = ($alone1_iops + $alone2_iops) / 2, ($alone1_bw + $alone2_bw) / 2
w_iops, w_bw = $with_iops, $with_bw
print(f'{\"job\":<30} {\"standalone S\":>14} {\"A alone\":>14} {\"A, standby B\":>14} {\"vs S\":>6} {\"vs alone\":>8}')
print(f'{\"4 KiB write + FLUSH, QD1\":<30} {s_iops:9.0f} IOPS {a_iops:9.0f} IOPS {w_iops:9.0f} IOPS {w_iops / s_iops:5.2f}x {w_iops / a_iops:7.2f}x')
print(f'{\"sequential 1 MiB write QD4\":<30} {s_bw:9.1f} MB/s {a_bw:9.1f} MB/s {w_bw:9.1f} MB/s {w_bw / s_bw:5.2f}x {w_bw / a_bw:7.2f}x')
print(f'(S before and after: {$s1_iops} and {$s2_iops} IOPS, {$s1_bw} and {$s2_bw} MB/s; A alone: {$alone1_iops} and {$alone2_iops} IOPS, {$alone1_bw} and {$alone2_bw} MB/s)')"
