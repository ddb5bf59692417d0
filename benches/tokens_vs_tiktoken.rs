//! Token counting throughput of tiktoken-rs alone and of Tollgate's bounded count, on the
//! texts `bench/tokens.sh` writes; Python tiktoken's side is `bench/tokens_tiktoken.py`.
//!
//! `TOKENS_TEXT_DIR=bench/out/tokens cargo bench --bench tokens_vs_tiktoken` prints one JSON
//! line per text, encoding and implementation: total tokens and the best wall time of
//! `TOKENS_RUNS` passes (default 5) on one thread. Each text is cut into documents after the
//! first newline at or past `TOKENS_DOC_BYTES` (default 64 KiB) from a document's start, as
//! the Python side does: a whole multi-MiB text would exhaust one count's exact budget and be
//! extrapolated, so the documents are sized like large prompts.

use std::time::{Duration, Instant};
use tollgate::tokens::{Encoding, Tally};

fn documents(data: &str, size: usize) -> Vec<&str> {
    let bytes = data.as_bytes();
    let mut docs = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let from = (start + size).min(bytes.len());
        let end = bytes[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| from + i + 1);
        docs.push(&data[start..end]);
        start = end;
    }
    docs
}

fn best_of(runs: usize, mut pass: impl FnMut() -> u64) -> (u64, Duration) {
    let mut best = Duration::MAX;
    let mut tokens = 0;
    for _ in 0..runs {
        let t = Instant::now();
        tokens = std::hint::black_box(pass());
        best = best.min(t.elapsed());
    }
    (tokens, best)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: a measurement, not a check.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = std::env::var("TOKENS_TEXT_DIR").unwrap_or_else(|_| "bench/out/tokens".into());
    let runs = env_or("TOKENS_RUNS", 5);
    let doc_bytes = env_or("TOKENS_DOC_BYTES", 64 << 10);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}; run bench/tokens.sh to write the texts"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    for (enc, name) in [
        (Encoding::O200k, "o200k_base"),
        (Encoding::Cl100k, "cl100k_base"),
    ] {
        let bpe = enc.bpe();
        for path in &files {
            let data = std::fs::read_to_string(path).expect("text file");
            let docs = documents(&data, doc_bytes);
            let text = path.file_stem().expect("file name").to_string_lossy();
            let line = |implementation: &str, tokens: u64, took: Duration, exact: bool| {
                println!(
                    "{{\"impl\": \"{implementation}\", \"text\": \"{text}\", \"encoding\": \"{name}\", \
                     \"bytes\": {}, \"docs\": {}, \"tokens\": {tokens}, \"seconds\": {}, \"exact\": {exact}}}",
                    data.len(),
                    docs.len(),
                    took.as_secs_f64()
                );
            };
            let (tokens, took) = best_of(runs, || {
                docs.iter()
                    .map(|d| bpe.encode_ordinary(d).len() as u64)
                    .sum()
            });
            line("tiktoken-rs", tokens, took, true);
            let (tokens, took) = best_of(runs, || docs.iter().map(|d| enc.count(d)).sum());
            // `count` does not say whether it stayed within its exact budget; a tally does.
            let exact = docs.iter().all(|d| {
                let mut tally = Tally::new(enc);
                tally.add_text(d);
                tally.count().exact
            });
            line("tollgate", tokens, took, exact);
        }
    }
}
