#!/usr/bin/env python3
"""Python tiktoken's side of bench/tokens.sh, and the table that puts both sides together.

    tokens_tiktoken.py measure TEXT_DIR ASSETS_DIR RUNS DOC_BYTES > python.jsonl
    tokens_tiktoken.py table python.jsonl rust.jsonl

`measure` builds tiktoken's o200k_base and cl100k_base from the rank files bundled with
tiktoken-rs (checked against the hashes tiktoken pins), with tiktoken's own patterns and
special tokens, and times `encode_ordinary` over each text's documents on one thread, best of
RUNS. A text is cut into documents the same way on both sides: after the first newline at or
past DOC_BYTES from the document's start.
"""

import json
import os
import sys
import time


def documents(data, size):
    docs, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start + size)
        end = len(data) if end < 0 else end + 1
        docs.append(data[start:end].decode("utf-8"))
        start = end
    return docs


def encodings(assets):
    import tiktoken
    import tiktoken.load
    from tiktoken_ext import openai_public

    real = tiktoken.load.load_tiktoken_bpe

    def local(url, expected_hash=None):
        # The published table's file name, read from tiktoken-rs's copy; the hash tiktoken
        # pins for it must still match.
        return real(os.path.join(assets, url.rsplit("/", 1)[1]), expected_hash)

    openai_public.load_tiktoken_bpe = local
    for name in ("o200k_base", "cl100k_base"):
        yield tiktoken.Encoding(**getattr(openai_public, name)())


def measure(text_dir, assets, runs, doc_bytes):
    import tiktoken

    for enc in encodings(assets):
        for file in sorted(os.listdir(text_dir)):
            if not file.endswith(".txt"):
                continue
            with open(os.path.join(text_dir, file), "rb") as f:
                data = f.read()
            docs = documents(data, doc_bytes)
            best, tokens = float("inf"), None
            for _ in range(runs):
                t = time.perf_counter()
                n = 0
                for doc in docs:
                    n += len(enc.encode_ordinary(doc))
                best = min(best, time.perf_counter() - t)
                tokens = n
            print(json.dumps({
                "impl": "python tiktoken " + tiktoken.__version__,
                "text": file[:-4],
                "encoding": enc.name,
                "bytes": len(data),
                "docs": len(docs),
                "tokens": tokens,
                "seconds": best,
            }), flush=True)


def table(paths):
    rows = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.setdefault((r["text"], r["encoding"]), {})[r["impl"]] = r
    print("| text | encoding | MiB | documents | tokens | python tiktoken | tiktoken-rs "
          "`encode_ordinary` | Tollgate `Encoding::count` | Tollgate / python | "
          "Tollgate / tiktoken-rs | counts agree |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    disagreements = 0
    for (text, encoding), by_impl in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        py = next(r for k, r in by_impl.items() if k.startswith("python"))
        rs = by_impl["tiktoken-rs"]
        tg = by_impl["tollgate"]

        def speed(r):
            mb = r["bytes"] / r["seconds"] / 1e6
            return f"{mb:.2f} MB/s, {r['tokens'] / r['seconds'] / 1e6:.2f} M tok/s"

        counts = {py["tokens"], rs["tokens"], tg["tokens"]}
        agree = "yes" if len(counts) == 1 and tg.get("exact", True) else (
            f"NO: python {py['tokens']}, tiktoken-rs {rs['tokens']}, Tollgate {tg['tokens']}")
        disagreements += agree != "yes"
        print(f"| {text} | {encoding} | {py['bytes'] / (1 << 20):.1f} | {py['docs']} | "
              f"{py['tokens']:,} | {speed(py)} | {speed(rs)} | {speed(tg)} | "
              f"**{py['seconds'] / tg['seconds']:.2f}×** | {rs['seconds'] / tg['seconds']:.2f}× "
              f"| {agree} |")
    if disagreements:
        print(f"\n{disagreements} row(s) where the counts differ.")
    return disagreements


def main():
    if sys.argv[1] == "measure":
        measure(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif sys.argv[1] == "table":
        sys.exit(1 if table(sys.argv[2:]) else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
