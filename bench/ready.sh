# Sourced by the bench scripts. Servers bind port 0 and print the address they got on their
# ready line (`tollgate ready proxy=ADDR admin=ADDR`, `tollgate ready sim=ADDR`); scripts send
# the server's stdout to a file and read the address from it, so no port is picked, closed
# and then bound again by a server that may find it taken.

# ready_addr FILE NAME [PID]: waits up to 30 s for the ready line in FILE and prints the
# address called NAME; fails early if process PID has exited.
ready_addr() {
    local file=$1 name=$2 pid=${3:-} line
    for _ in $(seq 300); do
        if line=$(grep -m1 '^tollgate ready ' "$file" 2>/dev/null); then
            sed -n "s/.* $name=\([^ ]*\).*/\1/p" <<<"$line"
            return 0
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "no ready line in $file" >&2
    return 1
}
