#!/usr/bin/env bash
# Peak gateway memory (VmHWM) while 4 GiB are written sequentially with default settings.
#   bench/memory.sh [GIB]
source "$(dirname "$0")/lib.sh"
GIB=${1:-4}
build
rm -rf "$OUT/memory"; mkdir -p "$OUT/memory"
DATA=$OUT/memory/data
start_cleave "$DATA"
trap stop_cleave EXIT
cli volume create big --size "$((GIB + 1))GiB" >/dev/null
fio --ioengine=nbd --uri="$(local_uri big)" --name=seq --rw=write --bs=1M --iodepth=8 \
  --size="${GIB}G" --refill_buffers=1 --output=/dev/null
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$CLEAVE_PID/status")
echo "wrote ${GIB} GiB sequentially; peak gateway memory (VmHWM): $((hwm / 1024)) MiB"
