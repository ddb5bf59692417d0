#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real binary, real sockets), then the
# official OpenAI and Anthropic Python SDKs against a running proxy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Build once; nextest then runs every test binary in parallel.
cargo build --locked --bins --tests
cargo nextest run --locked --no-fail-fast

VENV=.venv-sdk
if [ ! -x "$VENV/bin/pytest" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
fi
TOLLGATE_BIN="$PWD/target/debug/tollgate" "$VENV/bin/pytest" -q -p no:cacheprovider tests/sdk
