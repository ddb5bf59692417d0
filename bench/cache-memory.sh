#!/usr/bin/env bash
# What a cached byte costs in memory: the release proxy (in front of `tollgate sim-provider`,
# every answer cached in process) serves 200 warm-up calls, then REQUESTS distinct calls
# answered with TOKENS output tokens each; its RSS (VmRSS) and the cache's own byte count
# (`tollgate_cache_bytes`) are read before and after. The same traffic through a proxy
# without the cache shows what the calls alone leave behind.
#
#   bench/cache-memory.sh [REQUESTS] [TOKENS]     (default 4000 and 1000)
# TOLLGATE_BIN runs a prebuilt binary, else the release build; working files go to
# bench/out/cache-memory-{on,off}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQUESTS=${1:-4000}
TOKENS=${2:-1000}
source bench/sim-proxy.sh

for mode in on off; do
    if [ $mode = on ]; then CONFIG_ARGS=--cache; else CONFIG_ARGS=; fi
    start_sim_and_proxy "cache-memory-$mode"
    echo "== cache $mode"
    python3 bench/loadgen.py fill --proxy "$PROXY" --admin "$ADMIN" --pid $PROXY_PID \
        --requests "$REQUESTS" --tokens "$TOKENS"
    kill $PROXY_PID $SIM_PID 2>/dev/null
    wait 2>/dev/null || true
done
