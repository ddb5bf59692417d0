#!/usr/bin/env bash
# Soak: SECONDS at a steady RATE of mixed traffic through the proxy, with `tollgate
# sim-provider` as the upstream in its own process. The mix (bench/loadgen.py, KINDS):
# OpenAI chat and Anthropic messages, streamed and not; clients that hang up after the first
# event or before the response header; upstream resets mid-stream; provider errors (429,
# 529); bodies that are not JSON; chunked bodies with an invalid chunk size; and a SIGHUP
# reload every 30 s with a new price. Every request carries its own x-request-id.
#
# Fails (exit 1, saying why) unless every request sent has exactly one ledger record that
# says what happened to it, no record is unexpected, reloads were all applied, nothing
# panicked, the proxy's RSS is flat after warm-up, it still answers at the end, and the memory
# of 1,000 idle connections opened then is returned once they close.
#
#   bench/soak.sh [SECONDS] [RATE]      (defaults: 600 s, 300 requests/s)
# TOLLGATE_BIN runs a prebuilt binary (CI runs the debug build for 120 s), else the release
# build; working files go to BENCH_OUT (default bench/out/soak).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_TOTAL=${1:-600}
RATE=${2:-300}
source bench/sim-proxy.sh
# The load's connections plus a burst of 1,000 idle ones, in the client and in the proxy.
ulimit -n 8192 2>/dev/null || true

start_sim_and_proxy soak

echo "soak: ${SECONDS_TOTAL} s at ${RATE} requests/s through $BIN (files in $OUT)"
python3 bench/loadgen.py soak --proxy "$PROXY" --admin "$ADMIN" --sim "$SIM" --pid $PROXY_PID \
    --dir "$OUT" --log "$OUT/proxy.log" --log "$OUT/sim.log" \
    --seconds "$SECONDS_TOTAL" --rate "$RATE"
