#!/usr/bin/env bash
# Headless Chromium, which loads the spend page (`tollgate report --format html`, the admin
# port's `/`) in the browser tests: the Debian package `chromium`, installed here when
# missing.
#
#   scripts/chromium.sh install    install chromium if missing (needs root)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

install() {
    ensure_command chromium chromium
}

case "${1:-}" in
    install) install ;;
    *) echo "usage: $0 install" >&2; exit 2 ;;
esac
