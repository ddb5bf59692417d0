#!/usr/bin/env python3
"""Helpers of bench/compare.sh (standard library only).

  compare.py bodies --dir DIR           write DIR/chat.json (1.1 KB chat body) and
                                        DIR/stream.json (the same, "stream": true)
  compare.py mock --dir DIR             write DIR/nginx.conf.in: the static upstream's config
  compare.py ttfb --addr ADDR --body FILE [--header 'NAME: VALUE'...] --rate R --seconds S
                   --out FILE
                                        streamed calls at a fixed rate; per call, time to the
                                        response header, to the first body byte (the first
                                        event) and to the end
  compare.py record --round N --load L --target T --oha FILE|--ttfb FILE --cpu SECONDS
                    --out FILE          append one run's numbers to FILE (JSON lines)
  compare.py report --dir DIR --doc BENCHMARKS.md|-
                                        medians across rounds, as markdown: DIR/compare.md
                                        and the delimited section of the doc
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Conn, percentile, request_bytes  # noqa: E402

MODEL = "gpt-4o-mini"
BEGIN = "<!-- bench/compare.sh: begin -->"
END = "<!-- bench/compare.sh: end -->"

# ---------------------------------------------------------------------------------------
# Request bodies and the static upstream.


def bodies(args):
    d = Path(args.dir)
    question = (
        "We run a small support desk for a regional bicycle shop. Customers write in about "
        "orders, repairs, warranty claims and sizing. Below is today's message from a "
        "customer. Classify it as one of: order, repair, warranty, sizing, other; then draft "
        "a reply of at most three sentences that a human agent can send after a quick check. "
        "Keep the tone friendly and plain, do not promise dates we cannot keep, and ask for "
        "the order number if it is missing.\n\nMessage: Hi, I bought a gravel bike from you "
        "in March and the rear derailleur started skipping gears last week, mostly on the two "
        "smallest cogs. I have not crashed it and I clean the chain every few rides. Is this "
        "covered, and can I bring it in on a Saturday? I also wonder whether the 54 cm frame "
        "is right for me at 178 cm, since my lower back gets sore after two hours. Thanks a lot for your help, Sam Jones."
    )
    chat = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a careful, concise assistant for a bicycle "
             "shop's support desk. Answer in English."},
            {"role": "user", "content": question},
        ],
        "max_tokens": 200,
        "temperature": 0.2,
    }
    (d / "chat.json").write_text(json.dumps(chat))
    (d / "stream.json").write_text(json.dumps({**chat, "stream": True}))
    print(f"chat body {len(json.dumps(chat))} bytes")


def completion(created=1767225600):
    return {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": created, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant",
            "content": "Category: warranty. Skipping on the smallest cogs is usually a "
                       "derailleur adjustment, which we cover in the first year; bring it in "
                       "any Saturday morning with your order number."}}],
        "usage": {"prompt_tokens": 262, "completion_tokens": 38, "total_tokens": 300},
    }


def sse():
    """A streamed chat completion: role, three content deltas, the finish, a usage chunk
    (as OpenAI sends with stream_options.include_usage) and [DONE]."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1767225600,
            "model": MODEL}
    deltas = [{"role": "assistant", "content": ""}, {"content": "Category: warranty. "},
              {"content": "Bring it in any Saturday morning "}, {"content": "with your order number."}]
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [],
                   "usage": {"prompt_tokens": 262, "completion_tokens": 14, "total_tokens": 276}})
    events = "".join(f"data: {json.dumps(c, separators=(',', ':'))}\n\n" for c in chunks)
    return events + "data: [DONE]\n\n"


def nginx_string(text):
    """`text` as a single-quoted nginx string (its parser knows \\n, \\' and \\\\)."""
    assert "$" not in text, "nginx would expand it as a variable"
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def mock(args):
    d = Path(args.dir)
    body = json.dumps(completion(), separators=(",", ":"))
    conf = f"""# The static upstream: a fixed chat completion, or a fixed event stream under /stream/ or
# with `x-bench-stream: 1`, whatever the request body says.
worker_processes {args.workers};
daemon off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/body;
    server {{
        listen @ADDR@;
        location = /v1/chat/completions {{
            if ($http_x_bench_stream) {{ rewrite ^ /stream/v1/chat/completions last; }}
            default_type application/json;
            return 200 {nginx_string(body)};
        }}
        location / {{ return 404; }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            return 200 {nginx_string(sse())};
        }}
    }}
}}
"""
    (d / "nginx.conf.in").write_text(conf)


# ---------------------------------------------------------------------------------------
# Streamed calls at a fixed rate.


async def ttfb_run(args):
    body = Path(args.body).read_bytes()
    wire = request_bytes("/v1/chat/completions", body, dict(
        (k.strip(), v.strip()) for k, v in (h.split(":", 1) for h in args.header)))
    count = int(args.rate * args.seconds)
    start = time.perf_counter() + 0.1
    due = asyncio.Queue()
    for i in range(count):
        due.put_nowait(start + i / args.rate)
    samples, errors = [], []

    async def worker():
        conn = None
        while not due.empty():
            at = due.get_nowait()
            if conn is None:
                conn = await Conn.open(args.addr)
            if (wait := at - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            sent = time.perf_counter()
            # Latency correction: a call sent more than 2 ms after it was due (every
            # connection busy) is timed from when it was due.
            t0 = at if sent - at > 0.002 else sent
            try:
                await conn.send(wire)
                status, headers = await conn.head()
                t_head = time.perf_counter()
                t_first, data = None, b""
                async for piece in conn.pieces(headers):
                    if t_first is None and piece:
                        t_first = time.perf_counter()
                    data += piece
                t_end = time.perf_counter()
            except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
                errors.append(repr(e))
                conn.close()
                conn = None
                continue
            if status != 200 or b"data: [DONE]" not in data or t_first is None:
                errors.append(f"status {status}, {len(data)} bytes")
            else:
                samples.append((t_head - t0, t_first - t0, t_end - t0))
            if not conn.reusable(headers):
                conn.close()
                conn = None
        if conn:
            conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.connections)))
    elapsed = time.perf_counter() - began
    result = {"requests": len(samples), "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
              "seconds": elapsed, "rps": len(samples) / elapsed}
    for i, name in enumerate(("head", "ttfb", "end")):
        values = [s[i] for s in samples]
        result[name] = {"p50": percentile(values, 50), "p99": percentile(values, 99)}
    Path(args.out).write_text(json.dumps(result))


def ttfb(args):
    asyncio.run(ttfb_run(args))


# ---------------------------------------------------------------------------------------
# One run's numbers, and the report.


def record(args):
    row = {"round": args.round, "load": args.load, "target": args.target, "cpu_s": args.cpu}
    if args.oha:
        o = json.loads(Path(args.oha).read_text())
        codes = o.get("statusCodeDistribution", {})
        ok = int(codes.get("200", 0))
        total = o["summary"]["total"]
        p = o["latencyPercentiles"]
        row.update(p50=p["p50"], p99=p["p99"], requests=ok,
                   errors=sum(int(v) for k, v in codes.items() if k != "200")
                   + sum(int(v) for v in o.get("errorDistribution", {}).values()),
                   rps=ok / total if total else 0.0)
    else:
        t = json.loads(Path(args.ttfb).read_text())
        row.update(p50=t["ttfb"]["p50"], p99=t["ttfb"]["p99"], requests=t["requests"],
                   errors=t["errors"], rps=t["rps"], head=t["head"], end=t["end"])
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    err = f", {row['errors']} errors" if row["errors"] else ""
    print(f"  round {args.round} {args.load:>10} {args.target:>8}: p50 {ms(row['p50'])} "
          f"p99 {ms(row['p99'])}, {row['rps']:,.0f} req/s{err}", flush=True)


def ms(seconds):
    if seconds is None or seconds != seconds:
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.2f} ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f} µs"


def added(seconds):
    return ("+" if seconds >= 0 else "−") + ms(abs(seconds))


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def ledger_line(directory, sent):
    """What Tollgate's ledger says about the calls it served: metering and routing were on."""
    records = [json.loads(line) for f in sorted(directory.glob("*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
    ok = [r for r in records if r["status"] == 200]
    reported = sum(r["usage_source"] == "reported" and r["output_tokens"] > 0 for r in ok)
    routed = sum(r["policy"] == "bench-route" for r in ok)
    streams = sum(r["stream"] for r in ok)
    return (f"Tollgate's ledger: {len(records):,} records for the {sent:,} calls of the measured "
            f"runs plus the warm-up; {len(ok):,} with status 200, of which {reported:,} priced "
            f"from the upstream's reported usage, {routed:,} routed by the rule, {streams:,} "
            f"streamed.")


def report(args):
    d = Path(args.dir)
    rows = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
    machine = json.loads((d / "machine.json").read_text())
    memory = json.loads((d / "memory.json").read_text())
    by = defaultdict(list)
    for r in rows:
        by[(r["load"], r["target"])].append(r)
    loads = list(dict.fromkeys(r["load"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    rounds = sorted({r["round"] for r in rows})

    def per_round(load, target, key):
        return {r["round"]: r[key] for r in by[(load, target)]}

    def added_med(load, target, key):
        """Median over rounds of the target's percentile minus direct's, same round."""
        base, mine = per_round(load, "direct", key), per_round(load, target, key)
        return med([mine[n] - base[n] for n in mine if n in base])

    out = []
    m = machine
    out.append(f"Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}; {m['nginx']}, "
               f"{m['oha']}, {m['rustc']}; Tollgate {m['commit']}. "
               f"{m['threads']} worker threads for both proxies (nginx `worker_processes "
               f"{m['threads']}`, Tollgate `server.threads: {m['threads']}`); the static upstream "
               f"has {m['mock_workers']} nginx worker. {len(rounds)} rounds of {m['seconds']} s "
               f"per run, interleaved; medians across rounds. "
               + (f"Peers: {m['peers']}. " if m.get("peers") else "")
               + f"Load average "
               f"{m['load_before']} before, {m['load_after']} after. Total {m['elapsed']}.")
    out.append("")
    out.append("| load | target | p50 | p99 | added p50 | added p99 | req/s | CPU s / 1000 req |")
    out.append("|---|---|---|---|---|---|---|---|")
    for load in loads:
        for t in targets:
            rs = by[(load, t)]
            p50, p99 = med([r["p50"] for r in rs]), med([r["p99"] for r in rs])
            rps = med([r["rps"] for r in rs])
            cpu = med([r["cpu_s"] / r["requests"] * 1000 if r["requests"] else None for r in rs])
            errs = sum(r["errors"] for r in rs)
            a50 = "" if t == "direct" else added(added_med(load, t, "p50"))
            a99 = "" if t == "direct" else added(added_med(load, t, "p99"))
            cpu_s = f"{cpu:.3f}" + (" (upstream)" if t == "direct" else "")
            err = f" ({errs} errors)" if errs else ""
            out.append(f"| {load} | {t} | {ms(p50)} | {ms(p99)} | {a50} | {a99} | "
                       f"{rps:,.0f}{err} | {cpu_s} |")
    out.append("")
    out.append("| target | idle RSS at start | peak RSS (VmHWM) | idle RSS after the load |")
    out.append("|---|---|---|---|")
    for t, mm in memory.items():
        out.append(f"| {t} | {mib(mm['idle_start'])} | {mib(mm['peak'])} | {mib(mm['idle_end'])} |")
    out.append("")
    out.append("Against the targets (Tollgate-added / nginx-added latency, same percentile, "
               "each the median over rounds of target minus direct in the same round):")
    out.append("")
    out.append("| check | measured | target | met |")
    out.append("|---|---|---|---|")
    for load in loads:
        if load.startswith("max"):
            continue
        for key in ("p50", "p99"):
            tg, ng = added_med(load, "tollgate", key), added_med(load, "nginx", key)
            if ng > 0:
                measured, met = f"{tg / ng:.2f}×", tg <= 1.5 * ng
            else:  # nginx's hop added nothing measurable: no ratio to speak of
                measured, met = "no ratio", tg <= 0
            out.append(f"| {load}: added {key} | {measured} ({added(tg)} vs {added(ng)}) | "
                       f"≤ 1.5× | {'yes' if met else 'no'} |")
    maxes = [load for load in loads if load.startswith("max")]
    for load in maxes:
        tg = med([r["rps"] for r in by[(load, "tollgate")]])
        ng = med([r["rps"] for r in by[(load, "nginx")]])
        out.append(f"| {load}: throughput | {tg / ng:.0%} of nginx ({tg:,.0f} vs {ng:,.0f} req/s) "
                   f"| ≥ 90% | {'yes' if tg >= 0.9 * ng else 'no'} |")
    idle = memory["tollgate"]["idle_start"] / 1024
    out.append(f"| idle RSS | {idle:.1f} MiB | ≤ 40 MiB | {'yes' if idle <= 40 else 'no'} |")
    out.append("")
    out.append(ledger_line(d / "data" / "ledger", sum(
        r["requests"] + r["errors"] for r in rows if r["target"] == "tollgate")))
    # Warnings and errors only (Tollgate logs at warn; nginx notes the inherited socket).
    logs = {name: sum("[notice]" not in line for line in path.read_text().splitlines())
            if path.exists() else 0
            for name, path in (("Tollgate's log", d / "tollgate.log"),
                               ("the hop's error log", d / "nginx" / "error.log"),
                               ("the upstream's error log", d / "mock" / "error.log"))}
    out.append("Warnings and errors logged: " + ", ".join(f"{k} {v}" for k, v in logs.items()) + ".")
    section = "\n".join(out) + "\n"

    detail = ["", "Every run:", "", "| round | load | target | p50 | p99 | req/s | errors | CPU s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        detail.append(f"| {r['round']} | {r['load']} | {r['target']} | {ms(r['p50'])} | "
                      f"{ms(r['p99'])} | {r['rps']:,.0f} | {r['errors']} | {r['cpu_s']:.2f} |")
    (d / "compare.md").write_text("# bench/compare.sh\n\n" + section + "\n".join(detail) + "\n")
    print(section)
    if args.doc != "-":
        doc = Path(args.doc)
        text = doc.read_text()
        block = f"{BEGIN}\n{section}{END}"
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = head + block + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n## Tollgate against nginx: `bench/compare.sh`\n\n" + block + "\n"
        doc.write_text(text)
        print(f"updated {doc}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("bodies")
    p.add_argument("--dir", required=True)
    p.set_defaults(fn=bodies)
    p = sub.add_parser("mock")
    p.add_argument("--dir", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(fn=mock)
    p = sub.add_parser("ttfb")
    p.add_argument("--addr", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=ttfb)
    p = sub.add_parser("record")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--load", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--oha")
    p.add_argument("--ttfb")
    p.add_argument("--cpu", type=float, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=record)
    p = sub.add_parser("report")
    p.add_argument("--dir", required=True)
    p.add_argument("--doc", default="-")
    p.set_defaults(fn=report)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
