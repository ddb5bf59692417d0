#!/usr/bin/env python3
"""Load generator for bench/soak.sh and bench/idle-rss.sh: raw HTTP/1.1 over asyncio sockets
(standard library only), so malformed requests and abrupt closes are exactly what is sent.
Loopback only; every loop is bounded in time.

  loadgen.py config --sim ADDR --dir DIR [--cache] write DIR/tollgate.yaml and DIR/prices.yaml
                                                  (--cache: every answer cached, in process)
  loadgen.py ready --admin ADDR                   wait for the proxy's /readyz
  loadgen.py soak --proxy ADDR --admin ADDR --sim ADDR --pid PID --dir DIR [--seconds N --rate R]
  loadgen.py idle --proxy ADDR --pid PID --connections N
  loadgen.py fill --proxy ADDR --admin ADDR --pid PID [--requests N --tokens T]
"""

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path

KEY = "tg-soak-key"
UPSTREAM_KEY = "sk-soak-upstream"
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
REQUEST_TIMEOUT = 30.0
# A pooled connection idle longer than this is dropped rather than reused, so a request is
# never written into a connection the proxy may be closing (an ambiguous "was it received?").
POOL_MAX_IDLE = 5.0


# ---------------------------------------------------------------------------------------
# Config, rewritten on every reload with a new price level.

def output_price(level):
    """USD per 1M output tokens at reload `level`: 1, 2, 3... (input is free), so a record's
    cost / output_tokens tells which config priced it."""
    return level + 1


def write_config(directory, sim, level, cache=False):
    directory = Path(directory)
    price = output_price(level)
    prices = "version: 1\nmodels:\n" + "".join(
        f"  {m}: {{ prices: [ {{ effective_from: 2024-01-01, input: 0, output: {price} }} ] }}\n"
        for m in (OPENAI_MODEL, ANTHROPIC_MODEL)
    )
    config = f"""# price level {level}
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
data_dir: {directory / 'data'}
builtin_prices: false
prices: [{directory / 'prices.yaml'}]
log: {{ level: warn }}
server: {{ threads: 2, grace_period_secs: 1 }}
# Reloads come from SIGHUP only, so each one sent is counted once.
reload: {{ watch: false }}
providers:
  openai: {{ kind: openai_compatible, base_url: "http://{sim}", api_key_env: SOAK_UPSTREAM_KEY, read_timeout_ms: 20000 }}
  anthropic: {{ kind: anthropic, base_url: "http://{sim}", api_key_env: SOAK_UPSTREAM_KEY, read_timeout_ms: 20000 }}
models:
  {OPENAI_MODEL}: {{ provider: openai }}
  "claude-*": {{ provider: anthropic }}
keys:
  - {{ name: soak, key_env: SOAK_KEY, team: soak, project: soak }}
"""
    if cache:
        config += f"cache: {{ enabled: true, max_bytes: 1073741824 }}\npolicies: {directory / 'policies'}\n"
        (directory / "policies").mkdir(exist_ok=True)
        (directory / "policies" / "cache.yaml").write_text(
            "rules:\n  - name: cache-all\n    cache: { scope: team, nondeterministic: true }\n"
        )
    # Written aside and renamed, so a reload never reads half a file.
    for name, text in (("prices.yaml", prices), ("tollgate.yaml", config)):
        tmp = directory / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, directory / name)


# ---------------------------------------------------------------------------------------
# HTTP/1.1 on raw sockets.

class Closed(Exception):
    """The server closed the connection before the response was complete."""


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.idle_since = time.monotonic()

    @classmethod
    async def open(cls, addr):
        host, port = addr.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data):
        self.writer.write(data)
        await self.writer.drain()

    async def head(self):
        """Status and lower-cased headers of the next response."""
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raise Closed(f"closed before the response header ({len(e.partial)} bytes)")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return status, headers

    async def pieces(self, headers):
        """Yields the body as it arrives, de-chunked; raises Closed when it is cut short."""
        try:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await self.reader.readuntil(b"\r\n")
                        return
                    data = await self.reader.readexactly(size + 2)
                    yield data[:-2]
            elif "content-length" in headers:
                n = int(headers["content-length"])
                if n:
                    yield await self.reader.readexactly(n)
            else:
                while data := await self.reader.read(65536):
                    yield data
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise Closed(f"body cut short: {e!r}")

    async def body(self, headers):
        return b"".join([p async for p in self.pieces(headers)])

    def close(self):
        self.writer.close()

    def reusable(self, headers):
        return headers.get("connection", "").lower() != "close"


def request_bytes(path, body, headers, chunked_body=None):
    lines = [f"POST {path} HTTP/1.1", "host: soak", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if chunked_body is not None:
        lines.append("transfer-encoding: chunked")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + chunked_body
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# Per API format: path, model, authentication headers, extra body fields, and what ends a
# complete answer, streamed and not.
FORMATS = {
    "openai": ("/v1/chat/completions", OPENAI_MODEL, {"authorization": f"Bearer {KEY}"}, {},
               {True: b"data: [DONE]", False: b'"completion_tokens"'}),
    "anthropic": ("/v1/messages", ANTHROPIC_MODEL,
                  {"x-api-key": KEY, "anthropic-version": "2023-06-01"}, {"max_tokens": 256},
                  {True: b"event: message_stop", False: b'"output_tokens"'}),
}


def chat(fmt, rid, stream, extra=None, tokens=16, interval=0):
    """A chat call in API format `fmt`, asking the simulator for `tokens` output tokens."""
    path, model, auth, fields, _ = FORMATS[fmt]
    body = {"model": model, "stream": stream, **fields,
            "messages": [{"role": "user", "content": f"soak request {rid}"}]}
    headers = {**auth, "x-request-id": rid, "x-sim-output-tokens": tokens,
               "x-sim-token-interval-ms": interval, **(extra or {})}
    return request_bytes(path, json.dumps(body).encode(), headers)


def end_marker(fmt, stream):
    return FORMATS[fmt][4][stream]


class Pool:
    """Idle keep-alive connections to the proxy."""

    def __init__(self, addr):
        self.addr, self.idle = addr, []

    async def get(self):
        while self.idle:
            conn = self.idle.pop()
            if time.monotonic() - conn.idle_since < POOL_MAX_IDLE:
                return conn
            conn.close()
        return await Conn.open(self.addr)

    def put(self, conn):
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self):
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def complete(pool, wire, want_status, want_in_body):
    """A request answered in full on a pooled connection, then returned to the pool."""
    conn = await pool.get()
    try:
        await conn.send(wire)
        status, headers = await conn.head()
        body = await conn.body(headers)
    except BaseException:
        conn.close()
        raise
    if conn.reusable(headers):
        pool.put(conn)
    else:
        conn.close()
    if status != want_status:
        return f"status {status}: {body[:200]!r}"
    if want_in_body not in body:
        return f"no {want_in_body!r} in the body: {body[-200:]!r}"
    return None


# ---------------------------------------------------------------------------------------
# The soak's request kinds. Each sends one request and returns None when the client saw what
# it should, else a reason; KINDS says what its ledger record must say.

def answered(fmt, stream):
    """A call answered in full: 8-64 output tokens, streams paced 0-2 ms per event."""
    async def kind(pool, rid, rng):
        wire = chat(fmt, rid, stream, tokens=rng.randint(8, 64), interval=rng.choice((0, 1, 2)))
        return await complete(pool, wire, 200, end_marker(fmt, stream))
    return kind


async def k_provider_error(pool, rid, rng):
    """OpenAI's rate limit or Anthropic's overload, passed through as the provider sent it."""
    fmt, status = rng.choice((("openai", 429), ("anthropic", 529)))
    wire = chat(fmt, rid, rng.random() < 0.5, {"x-sim-fault": f"status={status}"})
    return await complete(pool, wire, status, b'"error"')


async def k_bad_json(pool, rid, rng):
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": rid}
    wire = request_bytes("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [', headers)
    return await complete(pool, wire, 400, b"not valid JSON")


async def k_bad_chunk(pool, rid, rng):
    """A chunked body whose second chunk size is not hex: a 400, and the connection closes."""
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": rid}
    first = b'{"model":"gpt-4o-mini",'
    wire = request_bytes("/v1/chat/completions", None, headers,
                         chunked_body=b"%x\r\n%s\r\nzz\r\n" % (len(first), first))
    conn = await Conn.open(pool.addr)
    try:
        await conn.send(wire)
        status, headers = await conn.head()
        body = await conn.body(headers)
        if status != 400 or b"InvalidChunk" not in body:
            return f"status {status}: {body[:200]!r}"
        if conn.reusable(headers):
            return "the connection stays open after a framing error"
        return None
    finally:
        conn.close()


async def k_upstream_reset(pool, rid, rng):
    """The upstream drops the connection after 3 events: the client gets an error event and
    a stream without its end."""
    extra = {"x-sim-fault": "reset-after=3"}
    wire = chat(rng.choice(tuple(FORMATS)), rid, True, extra, 32)
    conn = await Conn.open(pool.addr)
    try:
        await conn.send(wire)
        status, headers = await conn.head()
        got = b""
        try:
            async for piece in conn.pieces(headers):
                got += piece
        except Closed:
            pass
        else:
            return "the stream ended cleanly despite the upstream reset"
        if status != 200 or b"event: error" not in got:
            return f"status {status}, no error event: {got[-200:]!r}"
        return None
    finally:
        conn.close()


async def k_abort_mid_stream(pool, rid, rng):
    """Reads the response header and the first event of a slow stream, then hangs up."""
    conn = await Conn.open(pool.addr)
    try:
        await conn.send(chat(rng.choice(tuple(FORMATS)), rid, True, tokens=200, interval=10))
        status, headers = await conn.head()
        if status != 200:
            return f"status {status}"
        async for piece in conn.pieces(headers):
            if b"data:" in piece:
                return None
        return "the stream ended before its first event"
    finally:
        conn.close()


async def k_abort_before_header(pool, rid, rng):
    """The upstream holds its header back 3 s; the client leaves after 100-300 ms."""
    wire = chat(rng.choice(tuple(FORMATS)), rid, rng.random() < 0.5, {"x-sim-fault": "delay-ms=3000"})
    conn = await Conn.open(pool.addr)
    try:
        await conn.send(wire)
        try:
            await asyncio.wait_for(conn.head(), rng.uniform(0.1, 0.3))
            return "answered before the upstream's delay"
        except asyncio.TimeoutError:
            return None
    finally:
        conn.close()


# name: (weight, function, record status, record error or None for "no error" or ... for any)
KINDS = {
    "openai_stream": (25, answered("openai", True), 200, None),
    "openai_plain": (20, answered("openai", False), 200, None),
    "anthropic_stream": (18, answered("anthropic", True), 200, None),
    "anthropic_plain": (14, answered("anthropic", False), 200, None),
    "abort_mid_stream": (5, k_abort_mid_stream, 200, "client_disconnected"),
    "abort_before_header": (3, k_abort_before_header, 499, "client_disconnected"),
    "upstream_reset": (5, k_upstream_reset, 200, "upstream_failed"),
    "provider_error": (5, k_provider_error, None, ...),
    "bad_json": (3, k_bad_json, 400, "invalid_json"),
    "bad_chunk": (2, k_bad_chunk, 400, "invalid_request"),
}


def record_problem(kind, record):
    _, _, status, error = KINDS[kind]
    if kind == "provider_error":
        if record["status"] not in (429, 529) or not record["error"]:
            return f"status {record['status']}, error {record['error']!r}"
        return None
    if record["status"] != status:
        return f"status {record['status']}, expected {status}"
    if error is not ... and record["error"] != error:
        return f"error {record['error']!r}, expected {error!r}"
    return None


async def hold_open(addr, ids):
    """One plain call with each request id, each on its own connection, 100 at a time; the
    connections stay open. Returns them and the problems seen."""
    conns, problems = [], []

    async def open_one(rid):
        conn = await Conn.open(addr)
        conns.append(conn)
        try:
            await conn.send(chat("openai", rid, False))
            status, headers = await conn.head()
            body = await conn.body(headers)
            if status != 200:
                problems.append(f"{rid}: status {status}: {body[:200]!r}")
        except (Closed, ConnectionError) as e:
            problems.append(f"{rid}: {e!r}")

    for batch in range(0, len(ids), 100):
        await asyncio.gather(*(open_one(rid) for rid in ids[batch:batch + 100]))
    return conns, problems


# ---------------------------------------------------------------------------------------
# Soak.

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid):
    """User plus system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def http_get(addr, path):
    conn = await Conn.open(addr)
    try:
        await conn.send(f"GET {path} HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n".encode())
        status, headers = await conn.head()
        return status, (await conn.body(headers)).decode()
    finally:
        conn.close()


def metric(text, name, *labels):
    """The sum of the samples of `name` whose labels include every `k="v"` given."""
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(label in series for label in labels):
            total += float(value)
    return total


def read_ledger(directory):
    records = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


class Soak:
    def __init__(self, args):
        self.args = args
        self.dir = Path(args.dir)
        self.sim = args.sim
        self.pool = Pool(args.proxy)
        self.rng = random.Random(args.seed)
        self.run = "%06x" % random.Random().getrandbits(24)
        self.sent = {}  # request id -> kind
        self.client_problems = collections.defaultdict(list)
        self.latency = collections.defaultdict(list)  # kind -> seconds, for complete answers
        self.rss = []  # (seconds since start, KiB)
        self.reloads = 0
        self.max_in_flight = 0
        self.late = 0

    async def one(self, kind, rid):
        fn = KINDS[kind][1]
        rng = random.Random(rid)
        self.sent[rid] = kind
        start = time.monotonic()
        try:
            problem = await asyncio.wait_for(fn(self.pool, rid, rng), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            problem = f"no answer within {REQUEST_TIMEOUT:.0f} s"
        except (Closed, ConnectionError, OSError) as e:
            problem = f"{type(e).__name__}: {e}"
        if problem:
            self.client_problems[kind].append(f"{rid}: {problem}")
        else:
            self.latency[kind].append(time.monotonic() - start)
        return problem

    async def sample_rss(self, start, stop):
        while not stop.is_set():
            self.rss.append((time.monotonic() - start, rss_kib(self.args.pid)))
            try:
                await asyncio.wait_for(stop.wait(), self.args.rss_every)
            except asyncio.TimeoutError:
                pass

    async def reload_loop(self, start):
        """SIGHUP every reload_every seconds with the next price level, none in the last 5 s."""
        level = 0
        while True:
            at = start + (level + 1) * self.args.reload_every
            if at > start + self.args.seconds - 5:
                return
            await asyncio.sleep(at - time.monotonic())
            level += 1
            write_config(self.dir, self.sim, level)
            os.kill(self.args.pid, signal.SIGHUP)
            self.reloads = level

    async def load(self, start):
        names = list(KINDS)
        weights = [KINDS[k][0] for k in names]
        tasks = set()
        n = 0
        while True:
            at = start + n / self.args.rate
            if at >= start + self.args.seconds:
                break
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:
                self.late += 1
            kind = self.rng.choices(names, weights)[0]
            task = asyncio.create_task(self.one(kind, f"soak-{self.run}-{n:07d}-{kind}"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            self.max_in_flight = max(self.max_in_flight, len(tasks))
            n += 1
        self.steady = n
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)

    async def main(self):
        start = time.monotonic()
        cpu = cpu_seconds(self.args.pid), time.process_time()
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample_rss(start, stop))
        reloader = asyncio.create_task(self.reload_loop(start))
        await self.load(start)
        elapsed = time.monotonic() - start
        self.cpu = cpu_seconds(self.args.pid) - cpu[0], time.process_time() - cpu[1]
        reloader.cancel()
        # Still serving after all that: one last plain call, counted like the others.
        self.final_ok = await self.one("openai_plain", f"soak-{self.run}-final-openai_plain") is None
        stop.set()
        await sampler
        self.pool.close()
        # A burst of idle connections, each after one call, then all closed: what they and the
        # load held should be back with the system once idle (the proxy returns freed memory
        # every 10 s).
        burst = [f"soak-{self.run}-burst{i:05d}-openai_plain" for i in range(self.args.burst)]
        self.sent.update((rid, "openai_plain") for rid in burst)
        conns, problems = await hold_open(self.args.proxy, burst)
        self.client_problems["openai_plain"] += problems
        self.rss_burst = rss_kib(self.args.pid)
        for conn in conns:
            conn.close()
        await asyncio.sleep(self.args.idle_wait)
        self.rss_idle = rss_kib(self.args.pid)
        _, metrics = await http_get(self.args.admin, "/metrics")
        return elapsed, metrics

    def check(self, elapsed, metrics):
        failures = []
        ledger = self.dir / "data" / "ledger"
        # Records of aborted calls are written when the proxy notices; give it a moment.
        deadline = time.monotonic() + 20
        while True:
            records = read_ledger(ledger)
            seen = {r["request_id"] for r in records}
            if all(rid in seen for rid in self.sent) or time.monotonic() > deadline:
                break
            time.sleep(0.5)

        ids = collections.Counter(r["request_id"] for r in records)
        missing = [rid for rid in self.sent if rid not in ids]
        twice = [rid for rid, n in ids.items() if n > 1]
        unknown = [rid for rid in ids if rid not in self.sent]
        if missing:
            failures.append(f"{len(missing)} requests have no record, e.g. {missing[:5]}")
        if twice:
            failures.append(f"{len(twice)} request ids have several records, e.g. {twice[:5]}")
        if unknown:
            failures.append(f"{len(unknown)} records of requests never sent, e.g. {unknown[:5]}")

        wrong = []
        levels = collections.Counter()
        for r in records:
            kind = self.sent.get(r["request_id"])
            if kind is None or ids[r["request_id"]] > 1:
                continue
            if problem := record_problem(kind, r):
                wrong.append(f"{r['request_id']}: {problem}")
            if r["output_tokens"] and r["cost_usd"] is not None:
                levels[Decimal(r["cost_usd"]) * 1_000_000 / r["output_tokens"]] += 1
        if wrong:
            failures.append(f"{len(wrong)} records do not say what happened, e.g. {wrong[:5]}")

        problems = [p for kind in self.client_problems.values() for p in kind]
        if problems:
            failures.append(f"{len(problems)} requests were not answered as they should be, "
                            f"e.g. {problems[:5]}")
        if not self.final_ok:
            failures.append("the proxy did not answer a plain request at the end")

        # Each reload's price shows up in records priced after it, and only those prices.
        want_levels = {Decimal(output_price(level)) for level in range(self.reloads + 1)}
        got_levels = set(levels)
        ok_reloads = metric(metrics, "tollgate_config_reloads_total", 'result="ok"')
        refused = metric(metrics, "tollgate_config_reloads_total", 'result="refused"')
        if ok_reloads != self.reloads or refused:
            failures.append(f"{self.reloads} reloads sent, proxy counted {ok_reloads:.0f} ok "
                            f"and {refused:.0f} refused")
        if got_levels != want_levels:
            failures.append(f"prices in records {sorted(got_levels)}, expected {sorted(want_levels)}")

        panics = []
        for log in self.args.log:
            text = Path(log).read_text(errors="replace")
            panics += [f"{log}: {line[:200]}" for line in text.splitlines() if "panicked" in line]
        if panics:
            failures.append(f"{len(panics)} panics logged, e.g. {panics[:3]}")

        rss_verdict = self.rss_flat()
        if rss_verdict:
            failures.append(rss_verdict)

        self.summary(elapsed, records, levels)
        return failures

    def rss_flat(self):
        """Warm-up is the first quarter of the run; the level after it is the median sample of
        the second quarter. A leak lifts every later sample, so the last quarter's median, and
        the RSS once the load and the burst of idle connections are gone, may exceed the level
        by at most 10% or 8 MiB, whichever is more. (A stall on a shared machine piles up
        connections for a few seconds and lifts the maximum, not the median.)"""
        total = self.args.seconds
        level = [kib for t, kib in self.rss if total / 4 <= t < total / 2]
        last = [kib for t, kib in self.rss if t >= total * 3 / 4]
        if not level or not last:
            return f"too few RSS samples ({len(self.rss)}) to judge"
        self.rss_level, self.rss_last = percentile(level, 50), percentile(last, 50)
        self.rss_max = max(last)
        allowed = max(self.rss_level * 0.10, 8 * 1024)
        for name, kib in (("the last quarter's median", self.rss_last),
                          (f"{self.args.idle_wait:.0f} s after the load and the burst",
                           self.rss_idle)):
            if kib > self.rss_level + allowed:
                return (f"RSS grew after warm-up: {self.rss_level / 1024:.1f} MiB in the second "
                        f"quarter, {kib / 1024:.1f} MiB {name} (allowed "
                        f"+{allowed / 1024:.1f} MiB)")
        return None

    def summary(self, elapsed, records, levels):
        sent = collections.Counter(self.sent.values())
        n = self.steady
        print(f"soak: {len(self.sent)} requests: {n} in {elapsed:.0f} s ({n / elapsed:.0f}/s, "
              f"target {self.args.rate:.0f}/s, {self.late} started >0.5 s late, at most "
              f"{self.max_in_flight} in flight), 1 after them, {self.args.burst} on idle "
              f"connections; {len(records)} ledger records, {self.reloads} config reloads")
        print(f"  CPU during the load: proxy {self.cpu[0] / elapsed:.0%} of a core "
              f"({self.cpu[0] / n * 1e6:.0f} us per request), load generator "
              f"{self.cpu[1] / elapsed:.0%}")
        print(f"  {'kind':<20} {'sent':>7} {'as expected':>12} {'p50 ms':>8} {'p99 ms':>8}")
        for kind in KINDS:
            lat = [s * 1000 for s in self.latency[kind]]
            ok = sent[kind] - len(self.client_problems[kind])
            print(f"  {kind:<20} {sent[kind]:>7} {ok:>12} {percentile(lat, 50):>8.1f} "
                  f"{percentile(lat, 99):>8.1f}")
        by_status = collections.Counter(r["status"] for r in records)
        print("  records by status: " + ", ".join(f"{s}: {c}" for s, c in sorted(by_status.items())))
        print("  records by price level (USD per 1M output tokens): "
              + ", ".join(f"{p.normalize():f}: {c}" for p, c in sorted(levels.items())))
        if hasattr(self, "rss_level"):
            mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
            print(f"  proxy RSS: {mib(self.rss[0][1])} at start; median {mib(self.rss_level)} "
                  f"in the 2nd quarter, {mib(self.rss_last)} in the last (max "
                  f"{mib(self.rss_max)}); {mib(self.rss_burst)} with {self.args.burst} idle "
                  f"connections after the load, {mib(self.rss_idle)} {self.args.idle_wait:.0f} s "
                  f"after they closed ({len(self.rss)} samples)")


def cmd_ready(args):
    """Waits up to 10 s for the admin port's /readyz (the ledger writer runs)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if asyncio.run(http_get(args.admin, "/readyz"))[0] == 200:
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    print(f"the proxy at {args.admin} never became ready", file=sys.stderr)
    return 1


def cmd_soak(args):
    soak = Soak(args)
    elapsed, metrics = asyncio.run(soak.main())
    with open(Path(args.dir) / "rss.tsv", "w") as f:
        f.writelines(f"{t:.1f}\t{kib}\n" for t, kib in soak.rss)
    failures = soak.check(elapsed, metrics)
    for failure in failures:
        print(f"FAIL: {failure}")
    print("soak: FAILED" if failures else "soak: passed")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------
# Idle connections.

async def idle(args):
    pool = Pool(args.proxy)
    mib = lambda: rss_kib(args.pid) / 1024  # noqa: E731

    async def traffic(count, tag):
        for i in range(count):
            problem = await complete(pool, chat("openai", f"idle-{tag}-{i}", False), 200,
                                     end_marker("openai", False))
            assert problem is None, problem

    await traffic(200, "warm")
    await asyncio.sleep(args.settle)
    before = mib()

    conns, problems = await hold_open(args.proxy, [f"idle-conn-{i}" for i in range(args.connections)])
    assert not problems, problems[:5]
    await asyncio.sleep(args.settle)
    opened = mib()

    for conn in conns:
        conn.close()
    await asyncio.sleep(args.settle)
    closed = mib()
    await asyncio.sleep(args.wait)
    waited = mib()
    await traffic(200, "after")
    await asyncio.sleep(args.settle)
    after = mib()
    pool.close()
    print(f"idle-rss: proxy RSS {before:.1f} MiB before, {opened:.1f} MiB with "
          f"{args.connections} idle connections, {closed:.1f} MiB {args.settle:.0f} s after they "
          f"closed, {waited:.1f} MiB after {args.settle + args.wait:.0f} s, {after:.1f} MiB after "
          f"200 more requests")
    # Returned: within 10% or 8 MiB (whichever is more) of the level before, once idle.
    allowed = max(before * 0.10, 8)
    if waited > before + allowed:
        print(f"FAIL: {waited - before:.1f} MiB taken by the connections was not returned "
              f"(allowed {allowed:.1f} MiB)")
        return 1
    return 0


async def fill(args):
    """Memory a cached byte costs: RSS and the cache's own byte count before and after
    `requests` distinct calls, each answered with `tokens` output tokens."""
    pool = Pool(args.proxy)
    mib = lambda: rss_kib(args.pid) / 1024  # noqa: E731

    async def cached_bytes():
        status, text = await http_get(args.admin, "/metrics")
        assert status == 200, status
        return metric(text, "tollgate_cache_bytes"), metric(text, "tollgate_cache_entries")

    async def traffic(tag, count, tokens):
        queue = iter(range(count))

        async def worker():
            for i in queue:
                wire = chat("openai", f"fill-{tag}-{i}", False, tokens=tokens)
                problem = await complete(pool, wire, 200, end_marker("openai", False))
                assert problem is None, problem

        await asyncio.gather(*(worker() for _ in range(8)))

    await traffic("warm", 200, args.tokens)
    await asyncio.sleep(args.settle)
    before, (bytes_before, _) = mib(), await cached_bytes()
    started = time.monotonic()
    await traffic("fill", args.requests, args.tokens)
    took = time.monotonic() - started
    await asyncio.sleep(args.settle)
    after, (bytes_after, entries) = mib(), await cached_bytes()
    pool.close()
    cached = (bytes_after - bytes_before) / 2**20
    grew = after - before
    print(f"fill: {args.requests} distinct calls of {args.tokens} output tokens in {took:.1f} s; "
          f"RSS {before:.1f} -> {after:.1f} MiB (+{grew:.1f} MiB); cache holds {entries:.0f} "
          f"entries, +{cached:.1f} MiB by its own count")
    if cached > 0:
        print(f"fill: {grew / cached:.2f} bytes of RSS per cached byte")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("--sim", required=True)
    c.add_argument("--dir", required=True)
    c.add_argument("--cache", action="store_true")
    r = sub.add_parser("ready")
    r.add_argument("--admin", required=True)
    s = sub.add_parser("soak")
    s.add_argument("--proxy", required=True)
    s.add_argument("--admin", required=True)
    s.add_argument("--sim", required=True)
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--log", action="append", default=[], help="a log to search for panics")
    s.add_argument("--seconds", type=float, default=600)
    s.add_argument("--rate", type=float, default=300)
    s.add_argument("--reload-every", type=float, default=30)
    s.add_argument("--rss-every", type=float, default=2)
    s.add_argument("--idle-wait", type=float, default=12)
    s.add_argument("--burst", type=int, default=1000, help="idle connections after the load")
    s.add_argument("--seed", type=int, default=1)
    i = sub.add_parser("idle")
    i.add_argument("--proxy", required=True)
    i.add_argument("--pid", type=int, required=True)
    i.add_argument("--connections", type=int, default=2000)
    i.add_argument("--settle", type=float, default=3)
    i.add_argument("--wait", type=float, default=10)
    f = sub.add_parser("fill")
    f.add_argument("--proxy", required=True)
    f.add_argument("--admin", required=True)
    f.add_argument("--pid", type=int, required=True)
    f.add_argument("--requests", type=int, default=4000)
    f.add_argument("--tokens", type=int, default=1000)
    f.add_argument("--settle", type=float, default=3)
    args = p.parse_args()
    if args.cmd == "config":
        write_config(args.dir, args.sim, 0, cache=args.cache)
        return 0
    if args.cmd == "fill":
        return asyncio.run(fill(args))
    if args.cmd == "ready":
        return cmd_ready(args)
    if args.cmd == "soak":
        return cmd_soak(args)
    return asyncio.run(idle(args))


if __name__ == "__main__":
    sys.exit(main())
