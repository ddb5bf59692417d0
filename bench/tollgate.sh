# Sourced by bench scripts: the config of a Tollgate in front of one OpenAI-compatible
# upstream, which serves gpt-4o-mini; the client key is $BENCH_KEY (team `bench`), the
# upstream's $BENCH_UPSTREAM_KEY.

# tollgate_config DIR UPSTREAM THREADS: writes DIR/bench.yaml (data in DIR/data).
tollgate_config() {
    local dir=$1 upstream=$2 threads=$3
    cat > "$dir/bench.yaml" <<YAML
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
data_dir: $dir/data
log: { level: warn }
server: { threads: $threads, grace_period_secs: 0 }
providers:
  upstream: { kind: openai_compatible, base_url: "http://$upstream", api_key_env: BENCH_UPSTREAM_KEY }
models:
  gpt-4o-mini: { provider: upstream }
keys:
  - { name: bench, key_env: BENCH_KEY, team: bench }
YAML
}

# route_rule DIR: adds DIR/policies to DIR/bench.yaml, with one rule (bench-route, in
# DIR/policies/route.yaml) that matches every bench call and routes it to the same upstream.
route_rule() {
    mkdir -p "$1/policies"
    echo "policies: $1/policies" >> "$1/bench.yaml"
    cat > "$1/policies/route.yaml" <<YAML
rules:
  - name: bench-route
    match: { model: gpt-4o-mini, endpoint: /v1/chat/completions }
    route:
      targets: [{ provider: upstream, model: gpt-4o-mini }]
YAML
}

# tollgate_bin: sets BIN to TOLLGATE_BIN's absolute path (a prebuilt binary, e.g. to compare
# builds), else builds the release binary and sets BIN to it.
tollgate_bin() {
    if [ -n "${TOLLGATE_BIN:-}" ]; then
        BIN=$(realpath "$TOLLGATE_BIN")
    else
        cargo build --release --locked --quiet
        BIN=$PWD/target/release/tollgate
    fi
}
