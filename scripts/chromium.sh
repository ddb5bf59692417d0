#!/usr/bin/env bash
# Headless Chromium, which loads the spend page (`tollgate report --format html`, the admin
# port's `/`) in the browser tests: the Debian package `chromium`, installed here when
# missing.
#
#   scripts/chromium.sh install    install chromium if missing (needs root)
set -euo pipefail

install() {
    command -v chromium >/dev/null && return 0
    [ "$(id -u)" = 0 ] || {
        echo "chromium is missing: run scripts/chromium.sh install as root" \
            "(apt-get install chromium)" >&2
        exit 1
    }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    command -v chromium >/dev/null || { echo "the chromium package installed no chromium" >&2; exit 1; }
}

case "${1:-}" in
    install) install ;;
    *) echo "usage: $0 install" >&2; exit 2 ;;
esac
