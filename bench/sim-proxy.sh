# Sourced by soak.sh and idle-rss.sh, from the repository root: `tollgate sim-provider` and,
# in front of it, `tollgate serve` with the config bench/loadgen.py writes (both API formats
# routed to the simulator), each in its own process, both killed when the script exits.
# TOLLGATE_BIN runs a prebuilt binary (else the release build, built first); working files
# go to BENCH_OUT (else bench/out/NAME); CONFIG_ARGS are more arguments of `loadgen.py config`.

source bench/ready.sh

# start_sim_and_proxy NAME: sets BIN, OUT, SIM_PID, PROXY_PID and the addresses SIM, PROXY
# and ADMIN; returns once the proxy is ready.
start_sim_and_proxy() {
    [ -n "${TOLLGATE_BIN:-}" ] || cargo build --release --locked --quiet
    BIN=${TOLLGATE_BIN:-target/release/tollgate}
    OUT=${BENCH_OUT:-$PWD/bench/out/$1}
    rm -rf "$OUT" && mkdir -p "$OUT"
    trap 'kill ${PROXY_PID:-} ${SIM_PID:-} 2>/dev/null; wait 2>/dev/null' EXIT
    local bin=$BIN out=$OUT
    "$bin" sim-provider --listen 127.0.0.1:0 >"$out/sim.out" 2>"$out/sim.log" & SIM_PID=$!
    SIM=$(ready_addr "$out/sim.out" sim $SIM_PID)
    python3 bench/loadgen.py config --sim "$SIM" --dir "$out" ${CONFIG_ARGS:-}
    SOAK_KEY=tg-soak-key SOAK_UPSTREAM_KEY=sk-soak-upstream \
        "$bin" serve --config "$out/tollgate.yaml" >"$out/proxy.out" 2>"$out/proxy.log" & PROXY_PID=$!
    PROXY=$(ready_addr "$out/proxy.out" proxy $PROXY_PID)
    ADMIN=$(ready_addr "$out/proxy.out" admin $PROXY_PID)
    python3 bench/loadgen.py ready --admin "$ADMIN" || { echo "see $out/proxy.log" >&2; return 1; }
}
