#!/usr/bin/env bash
# promtool, which checks and unit-tests the alerting rules in deploy/prometheus/: it comes
# with the Debian package `prometheus`, installed here when missing (without the node
# exporter it recommends).
#
#   scripts/promtool.sh install    install promtool if missing (needs root)
set -euo pipefail

install() {
    command -v promtool >/dev/null && return 0
    [ "$(id -u)" = 0 ] || {
        echo "promtool is missing: run scripts/promtool.sh install as root" \
            "(apt-get install --no-install-recommends prometheus)" >&2
        exit 1
    }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    command -v promtool >/dev/null || { echo "the prometheus package installed no promtool" >&2; exit 1; }
}

case "${1:-}" in
    install) install ;;
    *) echo "usage: $0 install" >&2; exit 2 ;;
esac
