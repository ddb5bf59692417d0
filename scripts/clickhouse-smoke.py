#!/usr/bin/env python3
"""Smoke test of the real ClickHouse (chdb-core) server and Tollgate's ClickHouse schema.

    PY=$(scripts/setup-clickhouse.sh) && "$PY" scripts/clickhouse-smoke.py

Starts scripts/clickhouse-server.py on a port it holds, in a temp dir, applies
src/sink/clickhouse/migrations twice, inserts records in the proxy's JSON format with the
settings the sink must send, checks that the hourly rollup equals the raw rows (exact
Decimal money, unpriced requests counted apart), that a re-sent batch is stored once,
kills the server with SIGKILL in the middle of a load, restarts it on the same data,
replays every batch, checks that each row is there exactly once, kills and restarts once
more, and stops it. Exits 0 when all checks pass; prints "N passed, 0 failed".
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "scripts" / "clickhouse-server.py"
MIGRATIONS = ROOT / "src" / "sink" / "clickhouse" / "migrations"

# What the sink sends with every INSERT of a batch (besides insert_deduplication_token).
INSERT_SETTINGS = {
    "async_insert": "0",
    "insert_deduplicate": "1",
    "deduplicate_blocks_in_dependent_materialized_views": "1",
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": "0",
}

USER, PASSWORD = "tollgate", "s3cret pw"


class HttpError(RuntimeError):
    def __init__(self, code: int, body: str):
        super().__init__(f"HTTP {code}: {body[:1500]}")
        self.code = code
        self.body = body


class CH:
    def __init__(self, url: str, user: str | None = None, password: str = ""):
        self.url = url
        self.auth = None
        if user is not None:
            self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def q(self, sql: str, data: bytes | str | None = None, timeout: float = 60, **settings) -> str:
        params = {k: str(v) for k, v in settings.items()}
        if data is None:
            body = sql.encode()
        else:
            params["query"] = sql
            body = data.encode() if isinstance(data, str) else data
        req = urllib.request.Request(self.url + "/?" + urllib.parse.urlencode(params), data=body,
                                     method="POST")
        if self.auth:
            req.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            raise HttpError(e.code, e.read().decode("utf-8", "replace")) from None

    def rows(self, sql: str, **settings) -> list[dict]:
        out = self.q(sql + "\nFORMAT JSONEachRow", **settings)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def scalar(self, sql: str):
        return next(iter(self.rows(sql)[0].values()))


# ---- migrations: what the Rust runner has to do ----------------------------------------

def statements(text: str, subs: dict[str, str]) -> list[str]:
    """Substitute {placeholders}, split at ';' ending a line, drop comment-only pieces."""
    for k, v in subs.items():
        text = text.replace("{" + k + "}", v)
    out = []
    for piece in re.split(r";[ \t]*$", text, flags=re.M):
        code = [ln for ln in piece.splitlines() if ln.strip() and not ln.strip().startswith("--")]
        if code:
            out.append(piece.strip())
    return out


def migrate(ch: CH, **subs) -> int:
    subs.setdefault("replicated", "")  # no cluster here: plain MergeTree engines
    n = 0
    for f in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        for st in statements(f.read_text(), subs):
            ch.q(st)
            n += 1
    return n


# ---- records exactly as the proxy serializes them ---------------------------------------

TEAMS = [("search", "ranker", "prod"), ("search", "ranker", "staging"), ("support", "bot", "prod")]
MODELS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4"), ("openai", "ft:unpriced")]


def record(i: int) -> dict:
    team, project, env = TEAMS[i % len(TEAMS)]
    provider, model = MODELS[(i // 3) % len(MODELS)]
    # Spread over an hour boundary and a month (partition) boundary.
    base = 1793491200 if i % 4 == 0 else 1795773600  # 2026-10-31T22:40:00Z / 2026-11-27T10:00:00Z
    secs = base + (i * 37) % 7200
    ms = (i * 7919) % 1000
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"
    failed = i % 11 == 0
    unpriced = model == "ft:unpriced"
    cost = None if unpriced else f"{Decimal(i * 123457) / Decimal(10**9) + Decimal('0.000000001'):.9f}"
    return {
        "ts": ts, "request_id": f"req-{i:06d}", "team": team, "project": project, "env": env,
        "user": f"user{i % 7}", "feature": "chat" if i % 2 else "search",
        "workflow_id": f"wf-{i // 4}", "tags": {"tier": "gold" if i % 3 else "free", "n": str(i)},
        "key_name": "vk-search" if team == "search" else "", "provider": provider,
        "endpoint": "/v1/chat/completions", "requested_model": model, "model": model,
        "stream": i % 2 == 0, "status": 502 if failed else 200,
        "input_tokens": 1000 + i, "output_tokens": 0 if failed else 200 + i % 50,
        "cached_input_tokens": (i * 3) % 500, "cache_write_tokens": i % 5,
        "reasoning_tokens": i % 13, "usage_source": "none" if failed else ("estimated" if i % 5 == 0 else "reported"),
        "cost_usd": cost, "latency_ms": 100 + i % 900, "ttfb_ms": None if failed else 40 + i % 60,
        "error": "upstream 502" if failed else None,
    }


def jsonl(recs: list[dict]) -> bytes:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs).encode()


def insert_batch(ch: CH, table: str, token: str, recs: list[dict]) -> None:
    ch.q(f"INSERT INTO {table} FORMAT JSONEachRow", jsonl(recs),
         insert_deduplication_token=token, **INSERT_SETTINGS)


# ---- checks ----------------------------------------------------------------------------

class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, cond: bool, what: str, detail: object = "") -> None:
        if cond:
            self.passed += 1
            print(f"ok   {what}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {what} {detail}", flush=True)


DIMS = ("team", "project", "env", "model", "provider")
SUMS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")


def expected_rollup(recs: list[dict]) -> dict:
    """The hourly rollup computed in Python from the records, money as exact Decimal."""
    agg: dict = defaultdict(lambda: defaultdict(Decimal))
    for r in recs:
        hour = r["ts"][:13].replace("T", " ") + ":00:00"
        a = agg[(hour,) + tuple(r[d] for d in DIMS)]
        a["requests"] += 1
        for s in SUMS:
            a[s] += r[s]
        a["cost_usd"] += Decimal(r["cost_usd"] or 0)
        a["unpriced_requests"] += r["cost_usd"] is None
        a["error_requests"] += r["status"] >= 400 or r["error"] is not None
        a["estimated_usage_requests"] += r["usage_source"] == "estimated"
        a["latency_ms_sum"] += r["latency_ms"]
    return {k: {n: str(v) for n, v in a.items()} for k, a in agg.items()}


def rollup_from(ch: CH, db: str, raw: bool) -> dict:
    cols = ["requests"] + list(SUMS) + ["cost_usd", "unpriced_requests", "error_requests",
                                        "estimated_usage_requests", "latency_ms_sum"]
    if raw:
        # source columns qualified (r.x): the output aliases reuse their names
        sql = f"""SELECT toString(toStartOfHour(toDateTime(r.ts))) AS h,
            {', '.join(f'r.{d} AS {d}' for d in DIMS)},
            toString(count()) AS requests,
            {', '.join(f'toString(sum(r.{s})) AS {s}' for s in SUMS)},
            toString(sum(ifNull(r.cost_usd, toDecimal128(0, 9)))) AS cost_usd,
            toString(countIf(r.cost_usd IS NULL)) AS unpriced_requests,
            toString(countIf(r.status >= 400 OR r.error IS NOT NULL)) AS error_requests,
            toString(countIf(r.usage_source = 'estimated')) AS estimated_usage_requests,
            toString(sum(r.latency_ms)) AS latency_ms_sum
            FROM {db}.requests AS r GROUP BY h, {', '.join(DIMS)}"""
    else:
        sql = f"""SELECT toString(hour) AS h, {', '.join(DIMS)},
            {', '.join(f'toString(sum({c})) AS {c}' for c in cols)}
            FROM {db}.requests_hourly GROUP BY h, {', '.join(DIMS)}"""
    out = {}
    for r in ch.rows(sql):
        key = (r.pop("h"),) + tuple(r.pop(d) for d in DIMS)
        out[key] = r
    return out


def norm(d: dict) -> dict:
    """Compare numerically: Decimal('10') == Decimal('10.000000000')."""
    return {k: {n: Decimal(v) for n, v in a.items()} for k, a in d.items()}


# ---- server control --------------------------------------------------------------------

def hold_port() -> socket.socket:
    """A port of our own for the whole check, restarts included: bound with SO_REUSEPORT and
    never listening, so only the server (started with --reuse-port) can bind it too."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    return s


def start(port: int, data: Path) -> tuple[str, float]:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(SERVER), "start", "--reuse-port", "--port", str(port), "--data", str(data),
         "--user", USER, "--password", PASSWORD],
        check=True, capture_output=True, text=True, timeout=90)
    return out.stdout.strip(), time.monotonic() - t0


def server_pid(data: Path) -> int:
    return int((data / "server.pid").read_text())


def kill9(data: Path) -> None:
    pid = server_pid(data)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] == "Z":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.05)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    c = Checks()
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-ch-smoke-"))
    data = tmp / "ch"
    held = hold_port()
    port = held.getsockname()[1]
    try:
        url, took = start(port, data)
        print(f"server {url} ready in {took:.2f}s (pid {server_pid(data)})", flush=True)
        ch = CH(url, USER, PASSWORD)
        c.ok(ch.q("SELECT version()").startswith("26."), "ClickHouse 26.x", ch.q("SELECT version()"))

        # auth: basic auth works for the extra user and for passwordless default; a wrong
        # password is refused
        c.ok(ch.q("SELECT currentUser()").strip() == USER, "basic auth as extra user")
        c.ok(CH(url, "default", "").q("SELECT currentUser()").strip() == "default",
             "basic auth as default with empty password")
        try:
            CH(url, USER, "wrong").q("SELECT 1")
            c.ok(False, "wrong password refused")
        except HttpError as e:
            c.ok(e.code in (401, 403, 516) and "Authentication failed" in e.body,
                 "wrong password refused", e)

        # migrations, twice; and once more with every placeholder filled
        n1 = migrate(ch, db="tollgate", on_cluster="", ttl="", rollup_ttl="")
        n2 = migrate(ch, db="tollgate", on_cluster="", ttl="", rollup_ttl="")
        c.ok(n1 == n2 and n1 >= 6, f"migrations apply twice ({n1} statements)")
        migrate(ch, db="tollgate_ttl", on_cluster="",
                ttl="TTL toDateTime(ts) + INTERVAL 400 DAY", rollup_ttl="TTL hour + INTERVAL 800 DAY")
        ddl = ch.q("SELECT create_table_query FROM system.tables WHERE database = 'tollgate_ttl' AND name = 'requests'")
        c.ok("TTL" in ddl, "migrations apply with TTL clauses")
        tables = {r["name"] for r in ch.rows("SELECT name FROM system.tables WHERE database = 'tollgate'")}
        c.ok(tables >= {"requests", "attempts", "outcomes", "requests_hourly", "requests_hourly_mv"},
             "all tables exist", tables)

        # records in the proxy's JSON format; ts parsing and exact money
        recs = [record(i) for i in range(300)]
        batches = [recs[i:i + 50] for i in range(0, len(recs), 50)]
        for bi, b in enumerate(batches):
            insert_batch(ch, "tollgate.requests", f"smoke-{bi}", b)
        r0 = ch.rows("SELECT toUnixTimestamp64Milli(ts) AS ms, toString(cost_usd) AS cost, tags, stream, "
                     "ttfb_ms, error, `user` FROM tollgate.requests WHERE request_id = 'req-000001'")[0]
        want_ms = calendar.timegm(time.strptime(recs[1]["ts"][:19], "%Y-%m-%dT%H:%M:%S")) * 1000 \
            + int(recs[1]["ts"][20:23])
        c.ok(int(r0["ms"]) == want_ms, "ISO ts with ms and Z parsed as UTC", (r0, recs[1]["ts"]))
        c.ok(Decimal(r0["cost"]) == Decimal(recs[1]["cost_usd"]), "cost_usd decimal string exact", r0)
        c.ok(r0["tags"] == recs[1]["tags"] and r0["stream"] == recs[1]["stream"], "tags map and stream bool")
        null_cost = ch.scalar("SELECT count() FROM tollgate.requests WHERE cost_usd IS NULL")
        c.ok(int(null_cost) == sum(r["cost_usd"] is None for r in recs), "null cost stays NULL", null_cost)

        # a re-sent batch is stored once (raw and rollup)
        insert_batch(ch, "tollgate.requests", "smoke-0", batches[0])
        insert_batch(ch, "tollgate.requests", "smoke-3", batches[3])
        c.ok(int(ch.scalar("SELECT count() FROM tollgate.requests")) == len(recs), "re-sent batches deduplicated")
        exp = norm(expected_rollup(recs))
        c.ok(norm(rollup_from(ch, "tollgate", raw=True)) == exp, "raw sums equal Python sums")
        c.ok(norm(rollup_from(ch, "tollgate", raw=False)) == exp, "rollup equals raw after re-sends")
        total = ch.rows("SELECT toString(sum(cost_usd)) AS c, sum(unpriced_requests) AS u FROM tollgate.requests_hourly")[0]
        want_total = sum(Decimal(r["cost_usd"]) for r in recs if r["cost_usd"] is not None)
        c.ok(Decimal(total["c"]) == want_total and int(total["u"]) == sum(r["cost_usd"] is None for r in recs),
             f"rollup total cost exact ({total['c']} USD, {total['u']} unpriced)", (total, want_total))
        ch.q("OPTIMIZE TABLE tollgate.requests_hourly FINAL")
        c.ok(norm(rollup_from(ch, "tollgate", raw=False)) == exp, "rollup equals raw after merges")

        # attempts and outcomes
        attempts = [{"ts": r["ts"], "request_id": r["request_id"], "attempt": a, "role": role,
                     "provider": r["provider"], "model": r["model"], "status": 200 if a == 2 else 429,
                     "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"] if a == 2 else 0,
                     "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
                     "cost_usd": r["cost_usd"] if a == 2 else None, "latency_ms": 10, "ttfb_ms": None,
                     "error": None if a == 2 else "rate limited"}
                    for r in recs[:20] for a, role in ((1, "primary"), (2, "fallback"))]
        outcomes = [{"ts": r["ts"], "request_id": r["request_id"], "workflow_id": r["workflow_id"],
                     "outcome": "resolved", "value": 1.5 if i % 2 else None, "tags": {"src": "smoke"}}
                    for i, r in enumerate(recs[:10])]
        for _ in range(2):
            insert_batch(ch, "tollgate.attempts", "smoke-att-0", attempts)
            insert_batch(ch, "tollgate.outcomes", "smoke-out-0", outcomes)
        c.ok(int(ch.scalar("SELECT count() FROM tollgate.attempts")) == len(attempts), "attempts inserted once")
        c.ok(int(ch.scalar("SELECT count() FROM tollgate.outcomes")) == len(outcomes), "outcomes inserted once")

        # SIGKILL in the middle of a load, restart, replay every batch: exactly once
        load = [record(i) for i in range(1000, 5000)]
        lbatches = [load[i:i + 100] for i in range(0, len(load), 100)]
        acked: list[int] = []
        errors: list[str] = []

        def loader():
            for bi, b in enumerate(lbatches):
                try:
                    insert_batch(ch, "tollgate.requests", f"load-{bi}", b)
                    acked.append(bi)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{bi}: {e}")
                    return

        t = threading.Thread(target=loader)
        t.start()
        while len(acked) < 8 and t.is_alive():
            time.sleep(0.005)
        kill9(data)
        t.join(30)
        c.ok(bool(errors) and 0 < len(acked) < len(lbatches),
             f"SIGKILL mid-load ({len(acked)} of {len(lbatches)} batches acked, then: {errors[:1]})")
        url2, took = start(port, data)
        print(f"restarted after SIGKILL in {took:.2f}s", flush=True)
        stored = int(ch.scalar("SELECT count() FROM tollgate.requests WHERE request_id >= 'req-001000'"))
        c.ok(stored >= len(acked) * 100, f"acknowledged batches survived SIGKILL ({stored} rows)")
        for bi, b in enumerate(lbatches):  # the sink replays everything not confirmed
            insert_batch(ch, "tollgate.requests", f"load-{bi}", b)
        for bi in range(0, len(lbatches), 7):  # and some twice
            insert_batch(ch, "tollgate.requests", f"load-{bi}", lbatches[bi])
        allrecs = recs + load
        c.ok(int(ch.scalar("SELECT count() FROM tollgate.requests")) == len(allrecs)
             and int(ch.scalar("SELECT uniqExact(request_id) FROM tollgate.requests")) == len(allrecs),
             "after replay every row exactly once")
        exp = norm(expected_rollup(allrecs))
        c.ok(norm(rollup_from(ch, "tollgate", raw=False)) == exp, "rollup exact after SIGKILL + replay")

        # SIGKILL at rest, restart: everything still there
        kill9(data)
        url3, took = start(port, data)
        print(f"restarted again in {took:.2f}s, RSS {rss_mib(server_pid(data)):.0f} MiB", flush=True)
        c.ok(int(ch.scalar("SELECT count() FROM tollgate.requests")) == len(allrecs), "rows intact after 2nd SIGKILL")
        c.ok(norm(rollup_from(ch, "tollgate", raw=False)) == exp, "rollup intact after 2nd SIGKILL")
        c.ok(int(ch.scalar("SELECT count() FROM tollgate.attempts")) == len(attempts), "attempts intact")
        # the dedup log survived too
        insert_batch(ch, "tollgate.requests", "load-5", lbatches[5])
        c.ok(int(ch.scalar("SELECT count() FROM tollgate.requests")) == len(allrecs), "dedup log survives SIGKILL")

        pid = server_pid(data)
        subprocess.run([sys.executable, str(SERVER), "stop", "--pidfile", str(data / "server.pid")],
                       check=True, timeout=30)
        gone = not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] == "Z"
        c.ok(gone and not (data / "server.pid").exists(), "stop")
    except Exception as e:  # noqa: BLE001
        c.ok(False, "unexpected error", repr(e))
        log = data / "server.log"
        if log.exists():
            print(log.read_text()[-3000:])
    finally:
        if (data / "server.pid").exists():
            subprocess.run([sys.executable, str(SERVER), "stop", "--pidfile", str(data / "server.pid")],
                           timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
