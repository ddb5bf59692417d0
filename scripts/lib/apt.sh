# Sourced by the scripts that install a Debian package a test needs.
#
#   ensure_command COMMAND PACKAGE [APT-GET OPTIONS...]
# Returns at once when COMMAND is on PATH; otherwise installs PACKAGE (root only, else it
# says what to run and exits 1) and checks that COMMAND came with it.
ensure_command() {
    local command=$1 package=$2
    shift 2
    command -v "$command" >/dev/null && return 0
    [ "$(id -u)" = 0 ] || {
        echo "$command is missing: run $0 install as root (apt-get install $* $package)" >&2
        exit 1
    }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" "$package" >/dev/null
    command -v "$command" >/dev/null || { echo "the $package package installed no $command" >&2; exit 1; }
}
