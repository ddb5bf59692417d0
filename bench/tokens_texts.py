#!/usr/bin/env python3
"""Writes the texts bench/tokens.sh counts: English prose, source code, JSON, multilingual
text and a chat transcript, SIZE bytes each, into OUT_DIR.

    bench/tokens_texts.py OUT_DIR [SIZE]

Everything is drawn with a fixed seed from files every Debian machine with a Rust toolchain
has: prose from /usr/share/common-licenses and /usr/share/doc, code from the Rust crates in
~/.cargo/registry, multilingual text from the translations in /usr/share/locale (Chinese,
Japanese, Korean, Russian, Arabic, Hindi, Greek, Thai, Ukrainian, Hebrew). JSON is generated.
"""

import gettext
import glob
import gzip
import json
import os
import random
import sys

SEED = 20261130


def read_text(path):
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            return f.read(1 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return ""


def fill(parts, size, rng, sep):
    """Shuffled parts joined by sep, cycled until size bytes, cut at a part's end."""
    parts = list(parts)
    if not parts:
        sys.exit("no source text found")
    out, n = [], 0
    while n < size:
        rng.shuffle(parts)
        for p in parts:
            out.append(p)
            n += len(p.encode()) + len(sep)
            if n >= size:
                break
    return sep.join(out)


def prose_paragraphs():
    files = sorted(glob.glob("/usr/share/common-licenses/*"))
    for pattern in ("*/copyright", "*/README*", "*/NEWS*", "*/*.txt"):
        files += sorted(glob.glob("/usr/share/doc/" + pattern))
    seen = set()
    for path in files:
        if os.path.isdir(path):
            continue
        for para in read_text(path).split("\n\n"):
            para = para.strip("\n")
            letters = sum(c.isascii() and (c.isalpha() or c == " ") for c in para)
            if len(para) > 200 and letters > 0.85 * len(para) and para not in seen:
                seen.add(para)
                yield para


def code_files(rng):
    paths = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/*/src/**/*.rs"),
                             recursive=True))
    rng.shuffle(paths)
    for path in paths[:4000]:
        text = read_text(path)
        if 500 < len(text) < 200_000:
            yield text


def translations():
    langs = ["zh_CN", "ja", "ko", "ru", "ar", "hi", "el", "th", "uk", "he"]
    seen = set()
    for lang in langs:
        for path in sorted(glob.glob(f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo")):
            try:
                with open(path, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog
            except Exception:
                continue
            for key in sorted(catalog, key=str):
                msg = catalog[key]
                if isinstance(msg, str) and len(msg) > 20 and msg not in seen:
                    seen.add(msg)
                    yield msg


def json_records(rng, size):
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
             "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]
    lines, n, i = [], 0, 0
    while n < size:
        i += 1
        rec = {
            "id": f"rec_{rng.getrandbits(64):016x}",
            "index": i,
            "created": 1_700_000_000 + rng.randrange(10**8),
            "name": " ".join(rng.choice(words) for _ in range(rng.randrange(1, 4))),
            "active": rng.random() < 0.5,
            "price": round(rng.uniform(0, 1000), 2),
            "tags": [rng.choice(words) for _ in range(rng.randrange(0, 5))],
            "owner": {"team": rng.choice(words), "email": f"{rng.choice(words)}@example.com"},
            "url": f"https://api.example.com/v1/items/{i}?page={rng.randrange(100)}",
            "scores": [rng.randrange(-1000, 1000) for _ in range(rng.randrange(1, 6))],
        }
        line = json.dumps(rec, ensure_ascii=False)
        lines.append(line)
        n += len(line) + 1
    return "\n".join(lines) + "\n"


def chat(rng, size, prose, code, multi):
    asks = ["Can you explain this?", "What does this code do?", "Summarize the following.",
            "Translate this into English, please.", "Why does this fail?", "Rewrite it shorter."]
    out, n, turn = [], 0, 0
    while n < size:
        turn += 1
        kind = rng.randrange(4)
        if kind == 0:
            body = rng.choice(prose)
        elif kind == 1:
            snippet = rng.choice(code)
            start = rng.randrange(max(1, len(snippet) - 1500))
            body = "```rust\n" + snippet[start:start + 1500] + "\n```"
        elif kind == 2:
            body = "\n".join(rng.choice(multi) for _ in range(3))
        else:
            body = "- " + "\n- ".join(rng.choice(prose)[:200] for _ in range(4))
        user = f"### user\n{rng.choice(asks)}\n\n{body}\n\n"
        answer = " ".join(rng.choice(prose).split(". ")[0] + "." for _ in range(3))
        msg = user + f"### assistant\n{answer}\n\n"
        out.append(msg)
        n += len(msg.encode())
    return "".join(out)


def main():
    out_dir = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 4 << 20
    os.makedirs(out_dir, exist_ok=True)
    prose = list(prose_paragraphs())
    code = list(code_files(random.Random(SEED)))
    multi = list(translations())
    texts = {
        "prose": fill(prose, size, random.Random(SEED), "\n\n"),
        "code": fill(code, size, random.Random(SEED), "\n"),
        "json": json_records(random.Random(SEED), size),
        "multilingual": fill(multi, size, random.Random(SEED), "\n"),
        "chat": chat(random.Random(SEED), size, prose, code, multi),
    }
    for name, text in texts.items():
        with open(os.path.join(out_dir, name + ".txt"), "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
