#!/usr/bin/env python3
"""Run a real ClickHouse (26.x engine, from the PyPI package chdb-core) as an HTTP server.

No ClickHouse binary or Docker is needed: chdb-core ships the whole ClickHouse engine as a
Python extension. Its private entry point `chdb._chdb.query(sql, fmt, path=DIR)` runs a
full clickhouse-local in-process; `SYSTEM START LISTEN HTTP` inside that call opens the HTTP
listener configured by `config.xml` in the current working directory, and the listener
lives only as long as that call runs. So the server keeps the call busy forever with a query
that sleeps one second per row of `system.numbers` and returns nothing.

Usage (Python 3.11 with chdb-core installed, see scripts/setup-clickhouse.sh):

    clickhouse-server.py start --port 18123 --data DIR [--pidfile F] [--timeout 60]
        (--port 0: a free port, held from the pick until the server has bound it;
        --reuse-port: the caller holds --port itself with an SO_REUSEPORT socket)
        start in the background (own session, logs in DIR/server.log), wait until
        GET /ping answers "Ok.", print the URL (http://127.0.0.1:PORT) and exit 0.
    clickhouse-server.py stop --pidfile F      (or --data DIR: uses DIR/server.pid)
        SIGTERM, then SIGKILL after 10 s; exit 0 also if it was not running.
    clickhouse-server.py run --port 18123 --data DIR [--pidfile F]
        run in the foreground (what `start` spawns); also writes the pidfile. Fine to
        background with `&`; it answers /ping about 1 s later.
    start/run also take --host (default 127.0.0.1) and --user NAME --password PW to add a
    password-protected user (the user `default` always exists, without password).

Data lives in DIR/clickhouse (MergeTree parts, metadata); DIR/config.xml is rewritten on
every start. The server survives SIGKILL: restarting on the same DIR brings back every
INSERT that had been acknowledged. See scripts/clickhouse-server.md for findings.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# One second per row, one row per block, no time limit, no rows returned: this query never
# ends, and keeps the in-process server (and its HTTP listener) alive.
KEEPALIVE_SQL = (
    "SYSTEM START LISTEN HTTP; "
    "SELECT number FROM system.numbers WHERE sleepEachRow(1) "
    "SETTINGS max_block_size = 1, max_execution_time = 0, max_rows_to_read = 0"
)

CONFIG_XML = """<clickhouse>
    <!-- written by scripts/clickhouse-server.py on every start -->
    <listen_host>{host}</listen_host>
    <http_port>{port}</http_port>
{reuse_port}    <logger>
        <level>warning</level>
        <console>true</console>
    </logger>
    <max_concurrent_queries>200</max_concurrent_queries>
{user_directories}</clickhouse>
"""

# Only with --user: the in-process session always logs in as `default` without a password
# (a password on `default` makes the engine fail to start), so a password-protected user
# is an extra one. `default` stays passwordless and reachable too.
USER_DIRECTORIES_XML = """    <user_directories>
        <users_xml><path>{users_xml}</path></users_xml>
    </user_directories>
"""

USERS_XML = """<clickhouse>
    <!-- written by scripts/clickhouse-server.py on every start -->
    <profiles><default></default></profiles>
    <quotas><default></default></quotas>
    <users>
        <default>
            <no_password/>
            <networks><ip>::/0</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>1</access_management>
        </default>
        <{user}>
            <password>{password}</password>
            <networks><ip>::/0</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </{user}>
    </users>
</clickhouse>
"""


SCRIPT = os.path.abspath(__file__)


# With --reuse-port: the caller holds the port (a bound, non-listening SO_REUSEPORT socket)
# so that nothing else can take it between picking it and the server binding it.
REUSE_PORT_XML = "    <listen_reuse_port>1</listen_reuse_port>\n"


def run_argv(port: int, host: str, data: Path, pidfile: Path, user: str | None,
             password: str | None, reuse_port: bool) -> list[str]:
    argv = [sys.executable, SCRIPT, "run", "--port", str(port), "--host", host, "--data", str(data),
            "--pidfile", str(pidfile)]
    if reuse_port:
        argv.append("--reuse-port")
    if user:
        argv += ["--user", user, "--password", password or ""]
    return argv


def ping(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=timeout) as r:
            return r.status == 200 and r.read().strip() == b"Ok."
    except (OSError, urllib.error.URLError):
        return False


def cmd_run(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    user_dirs = ""
    if args.user:
        from xml.sax.saxutils import escape

        users_xml = data / "users.xml"
        users_xml.write_text(USERS_XML.format(user=args.user, password=escape(args.password or "")))
        user_dirs = USER_DIRECTORIES_XML.format(users_xml=escape(str(users_xml)))
    (data / "config.xml").write_text(
        CONFIG_XML.format(host=args.host, port=args.port, user_directories=user_dirs,
                          reuse_port=REUSE_PORT_XML if args.reuse_port else ""))
    db_path = data / "clickhouse"
    db_path.mkdir(exist_ok=True)
    pidfile = Path(args.pidfile).resolve() if args.pidfile else data / "server.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    # `import chdb` opens (and closes) an in-memory engine that reads ./config.xml of the
    # current directory: import it from a directory without one.
    os.chdir("/")
    import chdb  # noqa: E402  (heavy import, only in the server process)
    from chdb import _chdb  # noqa: E402

    chdb_version = chdb.engine_version
    # The server engine reads ./config.xml (listen_host, http_port, ...) when it starts.
    os.chdir(data)

    ready = threading.Event()
    failed: list[str] = []

    def keepalive() -> None:
        # Normally never returns. The output format is the HTTP interface's default format.
        try:
            res = _chdb.query(KEEPALIVE_SQL, "TabSeparated", path=str(db_path))
            err = res.error_message() if res.has_error() else ""
        except Exception as e:  # noqa: BLE001
            err = str(e)
        if not ready.is_set():
            failed.append(err.strip() or "engine call returned before the listener answered")
            return
        # Someone ended the query (KILL QUERY ...), which closed the listener. The engine
        # cannot be started twice in one process, so start afresh in this same process
        # (same pid, pidfile stays right): close every fd (the engine's sockets are not
        # close-on-exec) and exec. Data is as safe as after a SIGKILL.
        sys.stderr.write(f"keepalive query ended ({err.strip()}); re-executing the server\n")
        sys.stderr.flush()
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.execv(sys.executable, run_argv(args.port, args.host, data, pidfile, args.user, args.password,
                                           args.reuse_port))

    # The engine call blocks in C++ (Python signal handlers would never run there), so it
    # runs in a thread and the main thread stays free to handle SIGTERM/SIGINT.
    worker = threading.Thread(target=keepalive, name="clickhouse", daemon=True)
    worker.start()
    url = f"http://{args.host}:{args.port}"
    while not ping(url, timeout=1.0):
        if failed or not worker.is_alive():
            sys.stderr.write(f"clickhouse failed to start: {'; '.join(failed)}\n")
            sys.stderr.flush()
            os._exit(1)
        time.sleep(0.05)
    ready.set()

    def on_term(signum, frame):
        # An INSERT is durable once acknowledged (its part is renamed into place before the
        # HTTP answer), so a hard exit loses nothing acknowledged; in-flight inserts fail.
        os._exit(0)

    # Installed after the engine started, so ClickHouse's own handlers do not replace them.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sys.stdout.write(f"clickhouse {chdb_version} serving {url} data={db_path}\n")
    sys.stdout.flush()
    while True:
        time.sleep(3600)


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed child of ours not yet reaped) counts as dead, and so does a process
    # that is not this script's server (the pid was reused after a SIGKILL).
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ", 1)[1][:1] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        return any(a.endswith(b"clickhouse-server.py") for a in argv) and b"run" in argv
    except OSError:
        return False


def reserve_port(host: str) -> socket.socket:
    """A port of our own: bound with SO_REUSEPORT and never listening, so only a server that
    also sets SO_REUSEPORT (ClickHouse, through listen_reuse_port) can bind it too."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, 0))
    return s


def cmd_start(args: argparse.Namespace) -> int:
    reservation = None
    if args.port == 0:
        reservation = reserve_port(args.host)
        args.port = reservation.getsockname()[1]
        args.reuse_port = True
    try:
        return start(args)
    finally:
        if reservation is not None:
            reservation.close()


def start(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    pidfile = Path(args.pidfile).resolve() if args.pidfile else data / "server.pid"
    url = f"http://{args.host}:{args.port}"
    old = read_pid(pidfile)
    if old and alive(old):
        if ping(url):
            print(url)
            return 0
        sys.stderr.write(f"pid {old} from {pidfile} is alive but {url} does not answer\n")
        return 1
    if ping(url):
        sys.stderr.write(f"something else already answers on {url}\n")
        return 1
    log = open(data / "server.log", "ab")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        run_argv(args.port, args.host, data, pidfile, args.user, args.password, args.reuse_port),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True,
    )
    pidfile.write_text(f"{proc.pid}\n")
    while time.monotonic() - t0 < args.timeout:
        if proc.poll() is not None:
            sys.stderr.write(f"clickhouse exited with {proc.returncode}; see {data / 'server.log'}\n")
            sys.stderr.write(tail(data / "server.log"))
            return 1
        if ping(url, timeout=1.0):
            if args.verbose:
                sys.stderr.write(f"ready in {time.monotonic() - t0:.2f}s, pid {proc.pid}\n")
            print(url)
            return 0
        time.sleep(0.1)
    sys.stderr.write(f"clickhouse did not answer {url}/ping within {args.timeout}s\n")
    sys.stderr.write(tail(data / "server.log"))
    proc.kill()
    return 1


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def cmd_stop(args: argparse.Namespace) -> int:
    if args.pidfile:
        pidfile = Path(args.pidfile)
    elif args.data:
        pidfile = Path(args.data) / "server.pid"
    else:
        sys.stderr.write("stop needs --pidfile or --data\n")
        return 2
    pid = read_pid(pidfile)
    if pid is None or not alive(pid):
        pidfile.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
    pidfile.unlink(missing_ok=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("start", "run"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--data", required=True)
        s.add_argument("--pidfile", help="default DIR/server.pid")
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--user", help="also create this user, with --password (default stays passwordless)")
        s.add_argument("--password", default="")
        s.add_argument("--reuse-port", action="store_true",
                       help="bind with SO_REUSEPORT: the caller holds the port with a socket of its own")
        if name == "start":
            s.add_argument("--timeout", type=float, default=60.0)
            s.add_argument("-v", "--verbose", action="store_true")
    s = sub.add_parser("stop")
    s.add_argument("--pidfile")
    s.add_argument("--data")
    args = p.parse_args()
    if getattr(args, "user", None) == "default":
        p.error("--user default is not possible (the engine itself logs in as a passwordless default)")
    return {"start": cmd_start, "stop": cmd_stop, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
