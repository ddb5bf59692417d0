#!/usr/bin/env bash
# Installs a real ClickHouse (26.9 engine, PyPI package chdb-core) for tests, offline from
# everything but PyPI: a venv at <repo>/.venv-clickhouse with chdb-core==26.9.0.
# Idempotent and quiet: does nothing when the venv already has that version. Prints the
# venv's python on stdout, so callers can do
#   PY=$(scripts/setup-clickhouse.sh)
#   "$PY" scripts/clickhouse-server.py start --port 18123 --data /tmp/ch
# Needs python3 >= 3.9 with venv (Debian: python3-venv, installed here when missing and
# running as root). Override the interpreter with PYTHON=..., the venv with VENV=...
set -euo pipefail

CHDB_VERSION=26.9.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-clickhouse}"
PYTHON="${PYTHON:-python3}"

have_chdb() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$CHDB_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("chdb-core") == sys.argv[1] else 1)
EOF
}

if have_chdb; then
    echo "$VENV/bin/python"
    exit 0
fi

# Serialize concurrent runs (two CI steps, two test binaries).
mkdir -p "$(dirname "$VENV")"
exec 9>"${TMPDIR:-/tmp}/tollgate-setup-clickhouse.lock"
if command -v flock >/dev/null; then flock 9; fi
if have_chdb; then
    echo "$VENV/bin/python"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        rm -rf "$VENV"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y -qq "python${pyver}-venv" >/dev/null 2>&1 \
                || { apt-get update -qq >/dev/null && apt-get install -y -qq "python${pyver}-venv" >/dev/null; } \
                || apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        else
            echo "setup-clickhouse: '$PYTHON -m venv' failed; install python3-venv" >&2
            exit 1
        fi
    fi
fi

# --no-deps: chdb-core's dependencies (pandas, pyarrow, numpy: +330 MB) only serve its
# DataFrame/Arrow result formats; the server and the smoke test use none of them.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
    "chdb-core==$CHDB_VERSION" >&2

have_chdb || { echo "setup-clickhouse: chdb-core $CHDB_VERSION did not install" >&2; exit 1; }
echo "$VENV/bin/python"
