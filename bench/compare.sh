#!/usr/bin/env bash
# Tollgate against a bare nginx hop, as a platform owner would measure it: the same static
# upstream (nginx answering a fixed chat completion, or a fixed event stream), reached
# directly, through an nginx `proxy_pass` hop and through Tollgate (metering, pricing, ledger,
# metrics, and one routing rule that matches every call), with the same number of worker
# threads for both proxies. Load from `oha` at fixed rates with latency correction, plus a
# run at full speed; streamed calls from bench/compare.py at a fixed rate, timed to the first
# event. Runs are interleaved (direct, nginx, Tollgate, direct, ...) for ROUNDS rounds, and
# the report gives medians across rounds. Writes bench/out/compare/compare.md and the
# section of BENCHMARKS.md between its markers.
#
#   bench/compare.sh [SECONDS_PER_RUN] [ROUNDS]     (default 10 s, 3 rounds: about 10 minutes)
#
# THREADS: worker threads of both proxies (default 2); RATES: fixed request rates (default
# "200 1000 5000"); STREAM_RATE (default 20); MOCK_WORKERS: nginx workers of the upstream
# (default 1); TOLLGATE_BIN: a prebuilt binary instead of the release build; UPDATE_DOC=0
# leaves BENCHMARKS.md alone (e.g. for short trial runs); BENCH_OUT: working directory.
# PROFILE=1 measures nothing but records Tollgate with `perf` for SECONDS_PER_RUN during a
# full-speed run, and writes its top functions, self and inclusive, to BENCH_OUT.
# PEERS=1 adds LiteLLM's proxy (WORKERS=THREADS uvicorn workers) and Portkey's gateway (one
# Node.js process) as targets, installed on first use (bench/peers.sh); a run then takes
# about 14 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUN_SECONDS=${1:-10}
ROUNDS=${2:-3}
THREADS=${THREADS:-2}
RATES=${RATES:-200 1000 5000}
STREAM_RATE=${STREAM_RATE:-20}
CONNS=64       # connections of the fixed-rate runs
MAX_CONNS=32   # connections of the full-speed run
began=$(date +%s)

need=()
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
export PATH=$HOME/.cargo/bin:$PATH
command -v oha >/dev/null || cargo install oha --locked
source bench/ready.sh
source bench/nginx.sh
source bench/tollgate.sh
source bench/peers.sh
tollgate_bin
OUT=${BENCH_OUT:-$PWD/bench/out/compare}   # working files; wiped at start
rm -rf "$OUT" && mkdir -p "$OUT/mock" "$OUT/nginx" "$OUT/runs"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
export BENCH_KEY=tg-bench-key BENCH_UPSTREAM_KEY=sk-bench

# The static upstream.
python3 bench/compare.py bodies --dir "$OUT"
python3 bench/compare.py mock --dir "$OUT/mock" --workers "${MOCK_WORKERS:-1}"
start_nginx "$OUT/mock"; MOCK_PID=$NGINX_PID; PIDS+=("$MOCK_PID")
MOCK=$(ready_addr "$OUT/mock/nginx.out" nginx "$MOCK_PID")

# The nginx hop: keep-alive pool to the upstream, unbuffered (as a streaming proxy must be).
cat > "$OUT/nginx/nginx.conf.in" <<NGINX
worker_processes $THREADS;
daemon off;
error_log $OUT/nginx/error.log warn;
pid $OUT/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $OUT/nginx/body;
    proxy_temp_path $OUT/nginx/proxy;
    upstream mock { server $MOCK; keepalive 64; keepalive_requests 10000000; }
    server {
        listen @ADDR@;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGINX
start_nginx "$OUT/nginx"; HOP_PID=$NGINX_PID; PIDS+=("$HOP_PID")
HOP=$(ready_addr "$OUT/nginx/nginx.out" nginx "$HOP_PID")

# Tollgate: its defaults (metering, pricing, ledger, metrics) and one matching route rule.
tollgate_config "$OUT" "$MOCK" "$THREADS"
route_rule "$OUT"
"$BIN" serve --config "$OUT/bench.yaml" >"$OUT/tollgate.out" 2>"$OUT/tollgate.log" & TG_PID=$!
PIDS+=("$TG_PID")
TG=$(ready_addr "$OUT/tollgate.out" proxy "$TG_PID")
ADMIN=$(ready_addr "$OUT/tollgate.out" admin "$TG_PID")
for _ in $(seq 200); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.05; done

TARGETS="direct nginx tollgate"
declare -A ADDR=([direct]=$MOCK [nginx]=$HOP [tollgate]=$TG)
# Headers of every call (one a line), of streamed calls, and the streamed calls' body, by target.
declare -A HDRS STREAM_HDRS STREAM_BODY
for t in direct nginx tollgate; do
    HDRS[$t]="authorization: Bearer $BENCH_KEY"
    STREAM_HDRS[$t]="${HDRS[$t]}"$'\n'"x-bench-stream: 1"
    STREAM_BODY[$t]=$OUT/stream.json
done
if [ "${PEERS:-0}" = 1 ]; then
    start_litellm "$OUT" "$MOCK" "$THREADS"; PIDS+=("$LITELLM_PID")
    start_portkey "$OUT"; PIDS+=("$PORTKEY_PID")
    TARGETS+=" litellm portkey"
    ADDR[litellm]=$LITELLM
    HDRS[litellm]="authorization: Bearer sk-litellm-bench"
    STREAM_HDRS[litellm]=${HDRS[litellm]}
    sed 's/"gpt-4o-mini"/"gpt-4o-mini-stream"/' "$OUT/stream.json" > "$OUT/stream-litellm.json"
    STREAM_BODY[litellm]=$OUT/stream-litellm.json
    ADDR[portkey]=$PORTKEY
    HDRS[portkey]="authorization: Bearer $BENCH_UPSTREAM_KEY"$'\n'"x-portkey-provider: openai"$'\n'"x-portkey-custom-host: http://$MOCK/v1"
    STREAM_HDRS[portkey]="authorization: Bearer $BENCH_UPSTREAM_KEY"$'\n'"x-portkey-provider: openai"$'\n'"x-portkey-custom-host: http://$MOCK/stream/v1"
    STREAM_BODY[portkey]=$OUT/stream.json
fi
header_args() { # TARGET [stream]: the target's headers as -H options, one a line
    local h
    if [ "${2:-}" = stream ]; then h=${STREAM_HDRS[$1]}; else h=${HDRS[$1]}; fi
    while IFS= read -r line; do printf -- '-H\n%s\n' "$line"; done <<<"$h"
}
for t in $TARGETS; do   # LiteLLM takes half a minute or more to start
    mapfile -t H < <(header_args "$t")
    for i in $(seq 720); do
        curl -sf -o /dev/null -X POST "${H[@]}" -H 'content-type: application/json' \
            --data-binary @"$OUT/chat.json" "http://${ADDR[$t]}/v1/chat/completions" && break
        [ "$i" -lt 720 ] || { echo "$t does not answer; see $OUT" >&2; exit 1; }
        sleep 0.25
    done
done
# The processes whose CPU a target's run is charged: the upstream's workers for direct
# calls (for reference), the hop's workers, Tollgate's process (all its threads), a peer's
# process tree. Memory is the whole of each proxy: nginx's master and workers too.
declare -A CPU_PIDS=([direct]="$(nginx_workers "$MOCK_PID")" [nginx]="$(nginx_workers "$HOP_PID")" [tollgate]=$TG_PID)
declare -A MEM_PIDS=([nginx]="$HOP_PID ${CPU_PIDS[nginx]}" [tollgate]=$TG_PID)
if [ "${PEERS:-0}" = 1 ]; then
    for t in litellm portkey; do
        pid=LITELLM_PID; [ $t = portkey ] && pid=PORTKEY_PID
        CPU_PIDS[$t]=$(tree_pids "${!pid}" | tr '\n' ' ')
        MEM_PIDS[$t]=${CPU_PIDS[$t]}
    done
fi
PROXIES=${TARGETS#direct }

cpu_seconds() { # PIDS...: user+system seconds of the processes, all threads
    local ticks=0 p
    for p in "$@"; do ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    python3 -c "print($ticks / $(getconf CLK_TCK))"
}
status_kib() { # FIELD PIDS...: sum of a /proc/PID/status field (kB)
    local field=$1 sum=0 p; shift
    for p in "$@"; do sum=$((sum + $(awk -v f="$field:" '$1==f {print $2}' "/proc/$p/status"))); done
    echo $sum
}
declare -A IDLE_START
for t in $PROXIES; do IDLE_START[$t]=$(status_kib VmRSS ${MEM_PIDS[$t]}); done

oha_run() { # TARGET FILE CONNECTIONS [oha options]: POSTs of the chat body to TARGET
    local t=$1 file=$2 conns=$3 h; shift 3
    mapfile -t h < <(header_args "$t")
    oha --no-tui --output-format json -w -z "${RUN_SECONDS}s" -c "$conns" "$@" -m POST \
        "${h[@]}" -H 'content-type: application/json' \
        -D "$OUT/chat.json" "http://${ADDR[$t]}/v1/chat/completions" > "$file"
}
run() { # ROUND LOAD TARGET: one run, recorded in results.jsonl
    local round=$1 load=$2 t=$3 file="$OUT/runs/$1-$2-$3.json" before after h
    before=$(cpu_seconds ${CPU_PIDS[$t]})
    case $load in
        max) oha_run "$t" "$file" $MAX_CONNS ;;
        stream) mapfile -t h < <(header_args "$t" stream | sed 's/^-H$/--header/')
                python3 bench/compare.py ttfb --addr "${ADDR[$t]}" --body "${STREAM_BODY[$t]}" "${h[@]}" \
                    --rate "$STREAM_RATE" --seconds "$RUN_SECONDS" --out "$file" ;;
        *) oha_run "$t" "$file" $CONNS -q "$load" --latency-correction ;;
    esac
    after=$(cpu_seconds ${CPU_PIDS[$t]})
    local label=$load src=(--oha "$file")
    case $load in
        max) label="max (c=$MAX_CONNS)" ;;
        stream) label="stream $STREAM_RATE rps (TTFB)"; src=(--ttfb "$file") ;;
        *) label="$load rps" ;;
    esac
    python3 bench/compare.py record --round "$round" --load "$label" --target "$t" "${src[@]}" \
        --cpu "$(python3 -c "print($after - $before)")" --out "$OUT/results.jsonl"
}

if [ "${PROFILE:-0}" = 1 ]; then
    # Where Tollgate's time goes at full speed: perf samples of its process (DWARF call
    # graphs, as the release build keeps no frame pointers) while oha runs as in `max`.
    command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
    RUN_SECONDS=$((RUN_SECONDS + 4)) oha_run tollgate "$OUT/profile-oha.json" $MAX_CONNS & OHA_PID=$!
    sleep 2
    perf record -q -F 499 --call-graph dwarf,32768 -p "$TG_PID" -o "$OUT/perf.data" -- sleep "$RUN_SECONDS"
    wait $OHA_PID
    for mode in no-children children; do
        perf report -i "$OUT/perf.data" --$mode --stdio --no-demangle -g none --percent-limit 0.5 \
            2>/dev/null | grep -v '^$' > "$OUT/perf-$mode.txt"
    done
    echo "under perf: $(python3 -c "import json; print(round(json.load(open('$OUT/profile-oha.json'))['summary']['requestsPerSec']))") req/s"
    echo "profile: $OUT/perf-no-children.txt (self), $OUT/perf-children.txt (inclusive)"
    exit 0
fi
if [ -n "${TOLLGATE_BIN:-}" ]; then
    BUILD="binary $TOLLGATE_BIN"
else
    BUILD="release build of $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' with uncommitted changes')"
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "warming up (2 s per target)"
for t in $TARGETS; do RUN_SECONDS=2 oha_run "$t" /dev/null 8; done
for round in $(seq "$ROUNDS"); do
    for load in $RATES max stream; do
        for t in $TARGETS; do run "$round" "$load" "$t"; done
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A PEAK IDLE_END
for t in $PROXIES; do PEAK[$t]=$(status_kib VmHWM ${MEM_PIDS[$t]}); done
# Tollgate hands freed memory back to the system every 10 s.
sleep 12
for t in $PROXIES; do IDLE_END[$t]=$(status_kib VmRSS ${MEM_PIDS[$t]}); done
for t in $PROXIES; do
    echo "\"$t\": {\"idle_start\": ${IDLE_START[$t]}, \"peak\": ${PEAK[$t]}, \"idle_end\": ${IDLE_END[$t]}}"
done | paste -sd, | sed 's/.*/{&}/' > "$OUT/memory.json"
python3 - "$OUT/machine.json" <<PY
import json, sys
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
elapsed = $(date +%s) - $began
json.dump({
    "nproc": "$(nproc)", "cpu": cpu, "kernel": "$(uname -r)",
    "nginx": "$("$(nginx_binary)" -v 2>&1 | sed 's/^nginx version: //')",
    "oha": "$(oha --version)", "rustc": "$(rustc --version | cut -d' ' -f1-2)",
    "commit": "$BUILD",
    "peers": "$([ "${PEERS:-0}" = 1 ] && echo "LiteLLM $("$PEERS_DIR/litellm/bin/pip" show litellm | awk '/^Version/ {print $2}') ($THREADS workers), Portkey gateway $(python3 -c "import json; print(json.load(open('$PEERS_DIR/portkey/node_modules/@portkey-ai/gateway/package.json'))['version'])") on Node.js $(node --version)")",
    "threads": $THREADS, "mock_workers": ${MOCK_WORKERS:-1}, "seconds": $RUN_SECONDS,
    "load_before": "$LOAD_BEFORE", "load_after": "$LOAD_AFTER",
    "elapsed": f"{elapsed // 60} min {elapsed % 60} s",
}, open(sys.argv[1], "w"))
PY
if [ "${UPDATE_DOC:-1}" = 1 ]; then DOC=BENCHMARKS.md; else DOC=-; fi
python3 bench/compare.py report --dir "$OUT" --doc "$DOC"
echo "details: $OUT/compare.md"
