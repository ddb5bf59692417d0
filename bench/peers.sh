# Sourced by bench/compare.sh when PEERS=1: LiteLLM's proxy and Portkey's open-source gateway
# in front of the same static upstream, each installed on first use under PEERS_DIR (default
# ~/.cache/tollgate-bench): LiteLLM into a virtualenv from PyPI, the gateway from npm. Neither
# can report a port it was given, so each gets one that was free a moment before.

PEERS_DIR=${PEERS_DIR:-$HOME/.cache/tollgate-bench}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_litellm DIR UPSTREAM WORKERS: sets LITELLM_PID and LITELLM (host:port). Model
# gpt-4o-mini is the upstream's completion, gpt-4o-mini-stream its event stream; the client
# key is sk-litellm-bench (the master key: no database, so no virtual keys or spend logs).
start_litellm() {
    local dir=$1 upstream=$2 workers=$3 port
    [ -x "$PEERS_DIR/litellm/bin/litellm" ] || {
        python3 -m venv "$PEERS_DIR/litellm" && "$PEERS_DIR/litellm/bin/pip" install -q 'litellm[proxy]'
    }
    cat > "$dir/litellm.yaml" <<YAML
model_list:
  - model_name: gpt-4o-mini
    litellm_params: { model: openai/gpt-4o-mini, api_base: "http://$upstream/v1", api_key: sk-bench }
  - model_name: gpt-4o-mini-stream
    litellm_params: { model: openai/gpt-4o-mini, api_base: "http://$upstream/stream/v1", api_key: sk-bench }
general_settings: { master_key: sk-litellm-bench }
YAML
    port=$(free_port)
    # The local copy of its price table, not a download at start-up.
    LITELLM_LOCAL_MODEL_COST_MAP=True "$PEERS_DIR/litellm/bin/litellm" --config "$dir/litellm.yaml" \
        --host 127.0.0.1 --port "$port" --num_workers "$workers" >"$dir/litellm.log" 2>&1 &
    LITELLM_PID=$!
    LITELLM=127.0.0.1:$port
}

# start_portkey DIR: sets PORTKEY_PID and PORTKEY (host:port). A call names the provider
# (openai) and the upstream (x-portkey-custom-host) in its headers.
start_portkey() {
    local dir=$1 port server=$PEERS_DIR/portkey/node_modules/@portkey-ai/gateway/build/start-server.js
    [ -f "$server" ] || npm install --prefix "$PEERS_DIR/portkey" --no-audit --no-fund @portkey-ai/gateway
    port=$(free_port)
    NODE_ENV=production node "$server" --port="$port" --headless >"$dir/portkey.log" 2>&1 &
    PORTKEY_PID=$!
    PORTKEY=127.0.0.1:$port
}

# tree_pids PID: PID and all its descendants (LiteLLM's workers are its children).
tree_pids() {
    local p
    echo "$1"
    for p in $(pgrep -P "$1"); do tree_pids "$p"; done
}
