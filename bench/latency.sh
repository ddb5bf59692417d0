#!/usr/bin/env bash
# Added latency and CPU per request of Tollgate against a direct call to the same upstream,
# and against a bare nginx reverse-proxy hop (keep-alive upstream, one worker), measured in
# one run on this machine. The upstream is the simulated provider with no artificial delay,
# so the differences between the runs are the hops' costs.
#
#   bench/latency.sh [DURATION_SECONDS] [CONNECTIONS]
#
# ROUTED=1 sends Tollgate's requests through a routing policy: a rule that matches them and
# routes to the same upstream, so the run shows what matching and planning add.
# CACHED=1 makes that rule cache answers: every request but the first is a cache hit, so the
# run shows what a hit costs next to a proxied call.
# LIMITED=1 puts every request under a blocking budget and a per-key rate limit, both too
# large to refuse anything, so the run shows what reserving and counting cost.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION=${1:-15}
CONNS=${2:-16}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
# TOLLGATE_BIN runs another build (e.g. a debug one, to check the script, not to measure).
[ -n "${TOLLGATE_BIN:-}" ] || cargo build --release --locked --quiet
BIN=${TOLLGATE_BIN:-target/release/tollgate}
OUT=$PWD/bench/out
rm -rf "$OUT" && mkdir -p "$OUT/nginx"
source bench/ready.sh
source bench/nginx.sh
source bench/tollgate.sh
trap 'kill ${SIM_PID:-} ${PROXY_PID:-} ${NGINX_PID:-} 2>/dev/null; wait 2>/dev/null' EXIT

"$BIN" sim-provider --listen 127.0.0.1:0 >"$OUT/sim.out" 2>"$OUT/sim.log" & SIM_PID=$!
SIM=$(ready_addr "$OUT/sim.out" sim $SIM_PID)

tollgate_config "$OUT" "$SIM" 1
if [ "${ROUTED:-0}" = 1 ] || [ "${CACHED:-0}" = 1 ]; then route_rule "$OUT"; fi
if [ "${LIMITED:-0}" = 1 ]; then
    cat >> "$OUT/bench.yaml" <<YAML
budgets:
  - { name: bench-month, scope: { team: bench }, period: month, amount_usd: 1000000, action: block }
rate_limits:
  - { name: bench-key, per: key, rpm: 100000000, tpm: 100000000000 }
YAML
fi
if [ "${CACHED:-0}" = 1 ]; then
    # The benchmark's body does not pin sampling: let the rule cache it anyway.
    echo "cache: { enabled: true }" >> "$OUT/bench.yaml"
    echo "    cache: { scope: team, nondeterministic: true }" >> "$OUT/policies/route.yaml"
fi
export BENCH_KEY=tg-bench-key BENCH_UPSTREAM_KEY=sk-bench
"$BIN" serve --config "$OUT/bench.yaml" >"$OUT/proxy.out" 2>"$OUT/proxy.log" & PROXY_PID=$!
PROXY=$(ready_addr "$OUT/proxy.out" proxy $PROXY_PID)
ADMIN=$(ready_addr "$OUT/proxy.out" admin $PROXY_PID)

cat > "$OUT/nginx/nginx.conf.in" <<NGINX
worker_processes 1;
error_log $OUT/nginx/error.log warn;
pid $OUT/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $OUT/nginx/body;
    proxy_temp_path $OUT/nginx/proxy;
    upstream sim { server $SIM; keepalive 32; }
    server {
        listen @ADDR@;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGINX
start_nginx "$OUT/nginx"
NGX=$(ready_addr "$OUT/nginx/nginx.out" nginx $NGINX_PID)
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Warm both paths (tokenizer tables, pooled connections).
wrk -t1 -c4 -d2s -s bench/chat.lua "http://$SIM" >/dev/null
wrk -t1 -c4 -d2s -s bench/chat.lua "http://$PROXY" >/dev/null
wrk -t1 -c4 -d2s -s bench/chat.lua "http://$NGX" >/dev/null

pct() { awk -v p="$2" '$1==p {print $2}' "$OUT/$1.txt"; }
reqs() { awk '/requests in/ {print $1}' "$OUT/$1.txt"; }
rps() { awk '/Requests\/sec/ {print $2}' "$OUT/$1.txt"; }
to_us() { python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',v); f={'us':1,'ms':1e3,'s':1e6}[m[2]]; print(round(float(m[1])*f,1))" "$1"; }
HZ=$(getconf CLK_TCK)

# One connection measures the hop itself; $CONNS connections add queueing on this
# machine's two cores, shared by wrk, the upstream and the proxy.
for c in 1 "$CONNS"; do
    wrk -t1 -c"$c" -d"${DURATION}s" --latency -s bench/chat.lua "http://$SIM" > "$OUT/direct.txt"
    wrk -t1 -c"$c" -d"${DURATION}s" --latency -s bench/chat.lua "http://$NGX" > "$OUT/nginx.txt"
    before=$(cpu_ticks $PROXY_PID)
    wrk -t1 -c"$c" -d"${DURATION}s" --latency -s bench/chat.lua "http://$PROXY" > "$OUT/proxied.txt"
    after=$(cpu_ticks $PROXY_PID)
    n=$(reqs proxied)
    echo "== $c connection(s), ${DURATION}s each"
    printf '%-8s %10s %10s %10s %10s\n' path p50_us p90_us p99_us req_per_s
    for name in direct nginx proxied; do
        printf '%-8s %10s %10s %10s %10s\n' $name "$(to_us "$(pct $name 50%)")" "$(to_us "$(pct $name 90%)")" "$(to_us "$(pct $name 99%)")" "$(rps $name)"
    done
    python3 - "$(to_us "$(pct direct 50%)")" "$(to_us "$(pct nginx 50%)")" "$(to_us "$(pct proxied 50%)")" \
        "$(to_us "$(pct direct 99%)")" "$(to_us "$(pct nginx 99%)")" "$(to_us "$(pct proxied 99%)")" <<'PY'
import sys
d50, n50, p50, d99, n99, p99 = map(float, sys.argv[1:])
print(f"latency ratio proxied/direct: p50 {p50/d50:.2f}x, p99 {p99/d99:.2f}x; added p50 {p50-d50:.0f} us")
print(f"added p50 latency, Tollgate vs nginx hop: {p50-d50:.0f} us vs {n50-d50:.0f} us; "
      f"latency ratio proxied/nginx: p50 {p50/n50:.2f}x, p99 {p99/n99:.2f}x")
PY
    python3 -c "print(f'proxy CPU per request: {($after-$before)/$HZ*1e6/$n:.1f} us (user+system, over $n requests)')"
done
echo "ledger records with status 200 (warm-up included): $(cat "$OUT"/data/ledger/*.jsonl | grep -c '"status":200')"
echo "of them routed by a policy: $(cat "$OUT"/data/ledger/*.jsonl | grep -c '"policy":"bench-route"')"
echo "of them cache hits: $(cat "$OUT"/data/ledger/*.jsonl | grep -c '"cache_hit":true')"
