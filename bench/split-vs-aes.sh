#!/usr/bin/env bash
# Codec throughput against AES-256-GCM, measured in the same run on the same machine.
#
#   bench/split-vs-aes.sh [--m 3] [--n 5] [--chunk-size 1MiB] [--seconds 3]
#
# Prints OpenSSL's single-thread AES-256-GCM figure at 1 MiB blocks, Cleave's
# single-thread encode / decode / degraded decode figures, and each ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

args=("$@")
[[ " ${args[*]-} " == *" --seconds "* ]] || args+=(--seconds 3)

cargo build --release --quiet -p cleave
cleave=target/release/cleave

# openssl speed prints "... aes-256-gcm  <rate for each block size in 1000s of bytes/s>".
aes_line=$(openssl speed -elapsed -seconds 3 -bytes 1048576 -evp aes-256-gcm 2>/dev/null | grep -i '^aes-256-gcm' | tail -1)
aes_kbps=$(awk '{print $NF}' <<<"$aes_line" | tr -d k)
aes_gbps=$(awk -v k="$aes_kbps" 'BEGIN { printf "%.3f", k * 1000 / 1e9 }')

json=$("$cleave" bench split "${args[@]}" --json)
field() { python3 -c 'import json,sys; print("%.3f" % json.loads(sys.argv[1])[sys.argv[2]])' "$json" "$1"; }
enc=$(field encode_gbps)
dec=$(field decode_gbps)
deg=$(field decode_degraded_gbps)
one=$(field decode_one_missing_gbps)
layout=$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("%d-of-%d, %d byte chunks" % (j["m"], j["n"], j["chunk_size"]))' "$json")

ratio() { awk -v a="$1" -v b="$aes_gbps" 'BEGIN { printf "%.2f", a / b }'; }
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "openssl $(openssl version | awk '{print $2}') aes-256-gcm, 1 MiB blocks, one thread: $aes_gbps GB/s"
echo "cleave-split $layout, one thread:"
printf '  %-32s %6s GB/s  %5sx AES-GCM\n' \
  "encode" "$enc" "$(ratio "$enc")" \
  "decode (all data shares)" "$dec" "$(ratio "$dec")" \
  "decode (one data share lost)" "$one" "$(ratio "$one")" \
  "decode (N-M data shares lost)" "$deg" "$(ratio "$deg")"
echo "{\"aes_gcm_gbps\": $aes_gbps, \"encode_ratio\": $(ratio "$enc"), \"decode_ratio\": $(ratio "$dec"), \"decode_degraded_ratio\": $(ratio "$deg"), \"cleave\": $json}"
