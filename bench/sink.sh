#!/usr/bin/env bash
# ClickHouse sink: throughput shipping a ledger backlog (rows/s), and client latency with
# the sink on vs off, measured in one run against a real ClickHouse 26.9 (chdb-core).
#
#   bench/sink.sh [DURATION_SECONDS] [CONNECTIONS]
#   TOLLGATE_BIN=/path/to/tollgate bench/sink.sh ...   # a prebuilt binary, e.g. to compare builds
#   BENCH_OUT=/tmp/sink-bench bench/sink.sh ...        # working files elsewhere than bench/out/sink
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION=${1:-15}
CONNS=${2:-16}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
if [ -n "${TOLLGATE_BIN:-}" ]; then
    BIN=$(realpath "$TOLLGATE_BIN")
else
    cargo build --release --locked --quiet
    BIN=$PWD/target/release/tollgate
fi
OUT=${BENCH_OUT:-$PWD/bench/out/sink}   # working files; wiped at start
rm -rf "$OUT" && mkdir -p "$OUT"
PY=$(scripts/setup-clickhouse.sh)

source bench/ready.sh
# Every server binds port 0 and says which port it got (ClickHouse's launcher holds its port
# until the server has it).
CH_URL=$("$PY" scripts/clickhouse-server.py start --port 0 --data "$OUT/clickhouse" --pidfile "$OUT/ch.pid")
CH_PID=$(cat "$OUT/ch.pid")   # kept: the pidfile may be gone by cleanup time
"$BIN" sim-provider --listen 127.0.0.1:0 >"$OUT/sim.out" 2>"$OUT/sim.log" & SIM_PID=$!
PIDS=("$SIM_PID")
cleanup() {
    kill "${PIDS[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    "$PY" scripts/clickhouse-server.py stop --pidfile "$OUT/ch.pid" >/dev/null 2>&1 || kill "$CH_PID" 2>/dev/null || true
}
trap cleanup EXIT
export BENCH_KEY=tg-bench-key BENCH_UPSTREAM_KEY=sk-bench
SIM=$(ready_addr "$OUT/sim.out" sim "$SIM_PID")

# config NAME DATA_DIR SINK(on|off): writes OUT/NAME.yaml
config() {
    local name=$1 data=$2 sink=$3
    {
        echo "listen: 127.0.0.1:0"
        echo "admin_listen: 127.0.0.1:0"
        echo "data_dir: $data"
        echo "log: { level: warn }"
        echo "server: { threads: 1, grace_period_secs: 0 }"
        echo "providers:"
        echo "  upstream: { kind: openai_compatible, base_url: \"http://$SIM\", api_key_env: BENCH_UPSTREAM_KEY }"
        echo "models: { gpt-4o-mini: { provider: upstream } }"
        echo "keys: [ { name: bench, key_env: BENCH_KEY, team: bench } ]"
        if [ "$sink" = on ]; then
            echo "telemetry: { clickhouse: { url: \"$CH_URL\", database: bench_$name } }"
        fi
    } > "$OUT/$name.yaml"
}
start() { # NAME: starts the proxy; sets PID, PROXY and ADMIN (host:port)
    "$BIN" serve --config "$OUT/$1.yaml" >"$OUT/$1.out" 2>"$OUT/$1.log" &
    PID=$!
    PIDS+=("$PID")
    PROXY=$(ready_addr "$OUT/$1.out" proxy "$PID")
    ADMIN=$(ready_addr "$OUT/$1.out" admin "$PID")
}
stop() { # PID: SIGTERM, then wait until it has exited (it is not this shell's child)
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 400); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
    echo "process $1 did not stop" >&2; exit 1
}
ready() { for _ in $(seq 200); do curl -sf "http://$1/readyz" >/dev/null && return; sleep 0.05; done; echo "not ready" >&2; exit 1; }
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1==m {print $2}'; }
run_wrk() { # NAME HOST:PORT
    wrk -t1 -c4 -d2s -s bench/chat.lua "http://$2" >/dev/null
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s bench/chat.lua "http://$2" > "$OUT/$1.txt"
}
pct() { awk -v p="$2" '$1==p {print $2}' "$OUT/$1.txt"; }
to_us() { python3 -c "import sys,re; m=re.match(r'([0-9.]+)(us|ms|s)',sys.argv[1]); print(round(float(m[1])*{'us':1,'ms':1e3,'s':1e6}[m[2]],1))" "$1"; }

# 1. Client latency, sink off then on (the sink ships while the load runs).
config off "$OUT/data-off" off
start off; ready "$ADMIN"
run_wrk off "$PROXY"; stop "$PID"
config on "$OUT/data-on" on
start on; ready "$ADMIN"
run_wrk on "$PROXY"
stop "$PID"

# 2. Throughput: a fresh sink ships the sink-off run's ledger as a backlog.
BACKLOG=$(cat "$OUT"/data-off/ledger/*.jsonl | wc -l)
config backlog "$OUT/data-off" on
T0=$(date +%s.%N)
start backlog; ready "$ADMIN"
while [ "$(metric "$ADMIN" 'tollgate_sink_shipped_total{table="requests"}')" != "$BACKLOG" ]; do sleep 0.05; done
T1=$(date +%s.%N)
ROWS=$(curl -s "$CH_URL/?query=SELECT+count()+FROM+bench_backlog.requests")

printf '%-9s %10s %10s %10s\n' sink p50_us p90_us p99_us
for n in off on; do
    printf '%-9s %10s %10s %10s\n' "$n" "$(to_us "$(pct $n 50%)")" "$(to_us "$(pct $n 90%)")" "$(to_us "$(pct $n 99%)")"
done
python3 - "$(to_us "$(pct off 50%)")" "$(to_us "$(pct on 50%)")" "$(to_us "$(pct off 99%)")" "$(to_us "$(pct on 99%)")" <<'PY'
import sys
a50, b50, a99, b99 = map(float, sys.argv[1:])
print(f"latency ratio sink on/off: p50 {b50/a50:.2f}x, p99 {b99/a99:.2f}x")
PY
python3 -c "import sys; n=int(sys.argv[1]); t=float(sys.argv[3])-float(sys.argv[2]); print(f'sink throughput: {n} rows in {t:.2f} s = {n/t:,.0f} rows/s (includes proxy start and schema migration); ClickHouse holds {sys.argv[4]} rows')" "$BACKLOG" "$T0" "$T1" "$ROWS"
