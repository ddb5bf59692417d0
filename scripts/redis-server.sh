#!/usr/bin/env bash
# A throwaway Redis for tests and local runs: the Debian package `redis-server`, installed
# here when missing, on 127.0.0.1 only, with no persistence (no RDB snapshots, no AOF).
#
#   scripts/redis-server.sh install            install redis-server if missing (needs root)
#   scripts/redis-server.sh start DIR [PORT]   start one in the background (pid and log in
#                                              DIR), wait until it answers PING, print its
#                                              URL (redis://127.0.0.1:PORT); PORT: a free
#                                              port when omitted
#   scripts/redis-server.sh stop DIR           stop the one started with DIR (no error when
#                                              it is not running)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

install() {
    ensure_command redis-server redis-server
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Answers PING on PORT: speaks RESP over bash's /dev/tcp, so no redis-cli is needed.
pings() {
    local reply
    exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 1 reply <&3 || true
    exec 3<&- 3>&-
    [ "${reply%$'\r'}" = "+PONG" ]
}

start() {
    local dir=$1 port=${2:-}
    install
    mkdir -p "$dir"
    # A port picked free may be taken before Redis binds it: try a few.
    for _ in 1 2 3 4 5; do
        local p=${port:-$(free_port)}
        rm -f "$dir/redis.pid"
        if redis-server --bind 127.0.0.1 --port "$p" --save '' --appendonly no \
            --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" \
            --logfile "$dir/redis.log" >/dev/null; then
            for _ in $(seq 100); do
                if pings "$p"; then
                    echo "redis://127.0.0.1:$p"
                    return 0
                fi
                sleep 0.05
            done
        fi
        stop "$dir"
        [ -z "$port" ] || break
    done
    echo "redis-server did not start; see $dir/redis.log" >&2
    exit 1
}

stop() {
    local pidfile=$1/redis.pid pid
    # Daemonized Redis writes its pid file once running.
    for _ in $(seq 20); do [ -s "$pidfile" ] && break; sleep 0.05; done
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

case "${1:-}" in
    install) install ;;
    start) [ $# -ge 2 ] || { echo "usage: $0 start DIR [PORT]" >&2; exit 2; }; start "$2" "${3:-}" ;;
    stop) [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
    *) echo "usage: $0 install | start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
