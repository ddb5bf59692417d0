#!/usr/bin/env bash
# promtool, which checks and unit-tests the alerting rules in deploy/prometheus/: it comes
# with the Debian package `prometheus`, installed here when missing (without the node
# exporter it recommends).
#
#   scripts/promtool.sh install    install promtool if missing (needs root)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

install() {
    ensure_command promtool prometheus --no-install-recommends
}

case "${1:-}" in
    install) install ;;
    *) echo "usage: $0 install" >&2; exit 2 ;;
esac
