#!/usr/bin/env bash
# fio through Cleave's NBD export against fio through `nbdkit file` on a file on the
# same disk, in one run, with a working set that fits in Cleave's cache. Both over a Unix
# socket (Cleave serves NBD without TLS only there).
#   bench/nbd-vs-nbdkit.sh [SECONDS_PER_JOB]
source "$(dirname "$0")/lib.sh"
SECS=${1:-15}
SIZE=512M
build
rm -rf "$OUT/nbd"; mkdir -p "$OUT/nbd"
DATA=$OUT/nbd/data
start_cleave "$DATA" --cache-size 2GiB
trap stop_cleave EXIT
cli volume create bench --size 1GiB >/dev/null
CLEAVE_URI=$(local_uri bench)

truncate -s 1G "$OUT/nbd/ref.img"
nbdkit --exit-with-parent -f -U "$OUT/nbd/kit.sock" file "$OUT/nbd/ref.img" &
KIT_PID=$!
trap 'stop_cleave; kill $KIT_PID 2>/dev/null || true' EXIT
sleep 1
KIT_URI="nbd+unix:///?socket=$OUT/nbd/kit.sock"

echo "fio --ioengine=nbd, $SIZE working set, ${SECS}s per job; MB/s and IOPS"
printf '%-28s %18s %18s %8s\n' job "nbdkit file" "cleave" ratio
for spec in \
  "seq-write-1M-qd8:--rw=write --bs=1M --iodepth=8" \
  "seq-read-1M-qd8:--rw=read --bs=1M --iodepth=8" \
  "rand-write-4k-qd32:--rw=randwrite --bs=4k --iodepth=32" \
  "rand-read-4k-qd32:--rw=randread --bs=4k --iodepth=32"; do
  name=${spec%%:*}; args=${spec#*:}
  # shellcheck disable=SC2086
  read -r kbw kiops < <(fio_nbd "$KIT_URI" $args --size=$SIZE --time_based --runtime="$SECS")
  # shellcheck disable=SC2086
  read -r cbw ciops < <(fio_nbd "$CLEAVE_URI" $args --size=$SIZE --time_based --runtime="$SECS")
  ratio=$(python3 -c "print(f'{$cbw / $kbw:.2f}')")
  printf '%-28s %9s %8s %9s %8s %8s\n' "$name" "$kbw" "$kiops" "$cbw" "$ciops" "$ratio"
done
