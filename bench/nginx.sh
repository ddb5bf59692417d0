# Sourced by bench scripts that run nginx, from the repository root, after bench/ready.sh.
# nginx cannot report a port it was given, but it serves on listening sockets it inherits
# (named in $NGINX, as in its binary upgrades) when they match a `listen`: bind one here,
# once, write it into the config, and become nginx with it. The master stays in the
# foreground, so the PID is nginx's own.

# nginx_binary: installs nginx-light when there is no nginx; prints the binary's path.
nginx_binary() {
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] ||
        { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
    command -v nginx || echo /usr/sbin/nginx
}

# start_nginx DIR: runs nginx on DIR/nginx.conf.in, whose `listen @ADDR@;` gets a free
# loopback port; sets NGINX_PID and prints nothing; the address is then
# `ready_addr DIR/nginx.out nginx $NGINX_PID`.
start_nginx() {
    local dir=$1
    mkdir -p "$dir"
    python3 - "$(nginx_binary)" "$dir" <<'PY' &
import os, socket, sys
nginx, out = sys.argv[1:]
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)
addr = "%s:%d" % s.getsockname()
with open(f"{out}/nginx.conf.in") as f:
    conf = f.read().replace("@ADDR@", addr)
with open(f"{out}/nginx.conf", "w") as f:
    f.write(conf)
os.set_inheritable(s.fileno(), True)
# nginx takes an inherited socket as it is: a blocking one leaves a worker asleep in accept()
# with connections it already took, once there is more than one worker.
s.setblocking(False)
os.environ["NGINX"] = f"{s.fileno()};"
with open(f"{out}/nginx.out", "w") as f:
    f.write(f"tollgate ready nginx={addr}\n")
os.execv(nginx, [nginx, "-c", f"{out}/nginx.conf", "-p", out, "-e", f"{out}/error.log"])
PY
    NGINX_PID=$!
}

# nginx_workers PID: the worker processes of the nginx master PID.
nginx_workers() { pgrep -P "$1" | tr '\n' ' '; }
