#!/usr/bin/env bash
# Token counting throughput: Python tiktoken's `encode_ordinary`, tiktoken-rs's
# `encode_ordinary` and Tollgate's bounded `Encoding::count`, on the same texts (English prose,
# source code, JSON, multilingual text, a chat transcript; written by bench/tokens_texts.py
# with a fixed seed) and the same rank files (the ones tiktoken-rs bundles, checked against the
# hashes tiktoken pins), o200k_base and cl100k_base, one thread each, best of RUNS passes.
# Checks that all three give the same counts, and prints a markdown table (also written to
# BENCH_OUT/tokens.md); exits non-zero if any count differs.
#
#   bench/tokens.sh [RUNS] [MIB_PER_TEXT]     (default 5 runs of 4 MiB texts: about 3 minutes
#                                              after the release build)
#
# DOC_BYTES: texts are counted as documents of about this size (default 65536; see
# benches/tokens_vs_tiktoken.rs); BENCH_OUT: working directory (default bench/out/tokens).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-5}
MIB=${2:-4}
DOC_BYTES=${DOC_BYTES:-65536}
OUT=${BENCH_OUT:-bench/out/tokens}
VENV=bench/out/.venv-bench
export PATH=$HOME/.cargo/bin:$PATH

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import tiktoken' 2>/dev/null || "$VENV/bin/pip" install -q tiktoken

# The rank files of the tiktoken-rs version Tollgate is built with.
cargo fetch -q
tiktoken_rs=$(awk '/^name = "tiktoken-rs"/ { getline; gsub(/[" ]/, "", $0); sub(/version=/, "", $0); print }' Cargo.lock)
assets=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"tiktoken-rs-$tiktoken_rs"/assets | head -1)

mkdir -p "$OUT"
python3 bench/tokens_texts.py "$OUT/texts" $((MIB << 20))
cargo bench --bench tokens_vs_tiktoken --no-run 2>&1 | grep -v '^\s*\(Compiling\|Blocking\)' || true

load_before=$(uptime)
"$VENV/bin/python" bench/tokens_tiktoken.py measure "$OUT/texts" "$assets" "$RUNS" "$DOC_BYTES" >"$OUT/python.jsonl"
TOKENS_TEXT_DIR="$OUT/texts" TOKENS_RUNS=$RUNS TOKENS_DOC_BYTES=$DOC_BYTES \
    cargo bench -q --bench tokens_vs_tiktoken >"$OUT/rust.jsonl" 2>"$OUT/rust.err"
load_after=$(uptime)

status=0
{
    "$VENV/bin/python" bench/tokens_tiktoken.py table "$OUT/python.jsonl" "$OUT/rust.jsonl" || status=$?
    echo
    echo "- Machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)."
    echo "- Versions: python tiktoken $("$VENV/bin/python" -c 'import tiktoken; print(tiktoken.__version__)'), tiktoken-rs $tiktoken_rs, $(rustc --version | cut -d' ' -f1-2), Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')."
    echo "- Best of $RUNS passes per cell; documents of about $DOC_BYTES bytes."
    echo "- Load before: ${load_before#*load average: }; after: ${load_after#*load average: }."
} | tee "$OUT/tokens.md"
exit $status
