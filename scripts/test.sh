#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real binary, real sockets), then the
# official OpenAI and Anthropic Python SDKs against a running proxy.
# Tests that need ClickHouse share one server: $TOLLGATE_TEST_CLICKHOUSE_URL if set, else one
# started here (a real ClickHouse from PyPI's chdb-core, see scripts/clickhouse-server.md) on a
# port of its own with a temporary data dir, and stopped at the end whatever happens.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What a bare machine (Rust, Python, gcc) may lack: the test runner, and Python's venv module
# (Debian splits it out). The build itself needs neither cmake nor system libraries beyond
# OpenSSL's headers (see patches/libz-ng-sys).
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "python3-venv is missing: apt-get install python3-venv" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
scripts/redis-server.sh install # the response cache's shared tier is tested against a real one
scripts/promtool.sh install     # checks and unit-tests the alerting rules in deploy/prometheus/
scripts/chromium.sh install     # loads the spend page in a real browser (tests/it/spend_page.rs)
if ! command -v systemd-analyze >/dev/null; then # verifies deploy/systemd/tollgate.service
    [ "$(id -u)" = 0 ] || { echo "systemd-analyze is missing: apt-get install systemd" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

if [ -z "${TOLLGATE_TEST_CLICKHOUSE_URL:-}" ]; then
    PY=$(scripts/setup-clickhouse.sh)
    CH_DATA=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-test-clickhouse.XXXXXX")
    stop_clickhouse() {
        "$PY" scripts/clickhouse-server.py stop --data "$CH_DATA" || true
        rm -rf "$CH_DATA"
    }
    trap stop_clickhouse EXIT # the script's exit status is kept
    # Port 0: the launcher holds a free port from the moment it picks it until ClickHouse
    # has bound it, and prints the URL.
    if ! url=$("$PY" scripts/clickhouse-server.py start --port 0 --data "$CH_DATA" 2>"$CH_DATA/start.err"); then
        cat "$CH_DATA/start.err" >&2
        exit 1
    fi
    export TOLLGATE_TEST_CLICKHOUSE_URL="$url"
fi

# Formatting first: it is the cheapest check (skipped where rustfmt is not installed).
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check; fi

# Build once; nextest then runs every test binary in parallel.
cargo build --locked --bins --tests
cargo nextest run --locked --no-fail-fast
TOLLGATE_BIN="$PWD/target/debug/tollgate" bench/soak.sh 120 100  # 2-minute soak (BENCHMARKS.md)

VENV=.venv-sdk
if [ ! -x "$VENV/bin/pytest" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
fi
TOLLGATE_BIN="$PWD/target/debug/tollgate" "$VENV/bin/pytest" -q -p no:cacheprovider tests/sdk
