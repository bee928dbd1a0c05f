#!/usr/bin/env bash
# iSCSI against NBD on the same Cleave volume, and against tgtd (Debian `tgt`) with a file on the
# same disk, in one run: `qemu-img bench`, sequential 1 MiB reads and writes at queue depth 8,
# the same client for all three (qemu's nbd and iscsi drivers). The working set fits in
# Cleave's cache. Goals: iSCSI at least 0.8x NBD and 0.8x tgtd.
#   bench/iscsi.sh [MIB] [RUNS]   (needs root for tgtd; installs nothing)
source "$(dirname "$0")/lib.sh"
MIB=${1:-1024}
RUNS=${2:-3}
command -v tgtd >/dev/null || { echo "tgtd is missing: apt-get install tgt"; exit 1; }
build
rm -rf "$OUT/iscsi"; mkdir -p "$OUT/iscsi"
DATA=$OUT/iscsi/data
ISCSI_PORT=$(free_port)
start_cleave "$DATA" --cache-size 2GiB --iscsi "127.0.0.1:$ISCSI_PORT"
TGT_PORT=$(free_port)
TGT_CTL=$((20000 + RANDOM % 10000))
tgtd -f -C "$TGT_CTL" --iscsi "portal=127.0.0.1:$TGT_PORT" >"$OUT/iscsi/tgtd.log" 2>&1 &
TGT_PID=$!
# tgtd ignores SIGTERM while it has targets: ask it to stop, then make sure.
trap 'stop_cleave; tgtadm -C "$TGT_CTL" --op delete --mode system >/dev/null 2>&1 || true; pkill -9 -f "tgtd -f -C $TGT_CTL" || true; wait 2>/dev/null || true' EXIT
INITIATOR=iqn.2026-01.invalid.bench:qemu
cli volume create bench --size "$((MIB * 2))MiB" >/dev/null
cli client add bench --out "$OUT/iscsi/bench-tls" 2>/dev/null
cli group add bench && cli group join bench bench && cli group grant bench bench
cli client initiator add bench "$INITIATOR" --no-chap 2>/dev/null

truncate -s "$((MIB * 2))M" "$OUT/iscsi/ref.img"
sleep 1
tgt() { tgtadm -C "$TGT_CTL" --lld iscsi "$@"; }
tgt --op new --mode target --tid 1 -T iqn.2026-01.invalid.bench:tgt
tgt --op new --mode logicalunit --tid 1 --lun 1 -b "$OUT/iscsi/ref.img"
tgt --op bind --mode target --tid 1 -I ALL

NBD="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"path\":\"$(cd "$DATA" && pwd)/nbd.sock\",\"export\":\"bench\"}}"
ISCSI="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"iscsi\",\"transport\":\"tcp\",\"portal\":\"127.0.0.1:$ISCSI_PORT\",\"target\":\"iqn.2025-01.invalid.cleave:cleave:bench\",\"lun\":0,\"initiator-name\":\"$INITIATOR\"}}"
TGT="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"iscsi\",\"transport\":\"tcp\",\"portal\":\"127.0.0.1:$TGT_PORT\",\"target\":\"iqn.2026-01.invalid.bench:tgt\",\"lun\":1,\"initiator-name\":\"$INITIATOR\"}}"

# mbps IMAGE ARGS...: MB/s of one qemu-img bench run over MIB MiB.
mbps() {
  local img=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  qemu-img bench -f raw -t none -s 1M -d 8 -c "$MIB" "$@" "$img" >/dev/null
  t1=$(date +%s.%N)
  python3 -c "print(f'{$MIB * 1.048576 / ($t1 - $t0):.0f}')"
}
dirty() { cli volume show bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])'; }
settle() { for _ in $(seq 6000); do [ "$(dirty)" = 0 ] && return; sleep 0.1; done; }

echo "qemu-img bench, ${MIB} MiB of 1 MiB requests at depth 8, best of $RUNS; MB/s"
printf '%-12s %10s %10s %10s %12s %12s\n' job "nbd" "iscsi" "tgtd" "iscsi/nbd" "iscsi/tgtd"
for job in write read; do
  flag=(); [ "$job" = write ] && flag=(-w)
  best_n=0 best_i=0 best_t=0
  for _ in $(seq "$RUNS"); do
    settle; n=$(mbps "$NBD" "${flag[@]}")
    settle; i=$(mbps "$ISCSI" "${flag[@]}")
    t=$(mbps "$TGT" "${flag[@]}")
    ((n > best_n)) && best_n=$n; ((i > best_i)) && best_i=$i; ((t > best_t)) && best_t=$t
  done
  printf '%-12s %10s %10s %10s %12s %12s\n' "seq-$job-1M" "$best_n" "$best_i" "$best_t" \
    "$(python3 -c "print(f'{$best_i / $best_n:.2f}')")" "$(python3 -c "print(f'{$best_i / $best_t:.2f}')")"
done
