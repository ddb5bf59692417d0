#!/usr/bin/env bash
# Does memory taken by idle connections come back once they close? The release proxy (in
# front of `tollgate sim-provider`) serves 200 warm-up requests; then CONNECTIONS clients each
# make one request and stay connected, idle; then all of them close. The proxy's RSS
# (VmRSS) is read before, while they are open, 3 s and 13 s after they closed, and after 200
# more requests on one connection. Fails unless the RSS 13 s after they closed is within 10%
# or 8 MiB (whichever is more) of the RSS before.
#
#   bench/idle-rss.sh [CONNECTIONS]     (default 2000)
# TOLLGATE_BIN runs a prebuilt binary, else the release build; working files go to BENCH_OUT
# (default bench/out/idle).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONNECTIONS=${1:-2000}
source bench/sim-proxy.sh
# Each connection is a descriptor in the client and in the proxy.
ulimit -n $((CONNECTIONS * 2 + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"

start_sim_and_proxy idle

python3 bench/loadgen.py idle --proxy "$PROXY" --pid $PROXY_PID --connections "$CONNECTIONS"
