//! Local token counting with tiktoken, used when a provider does not report usage.
//!
//! Counting is exact for ordinary text and bounded for everything else:
//!
//! - Text is cut into pieces where the tokenizer's pre-split pattern never matches across
//!   (see [`is_boundary`]), so the pieces' counts add up to the count of the whole. The
//!   tokenizer never sees a long piece, which matters: its regex engine gives up on a run of
//!   about a million spaces (tiktoken-rs then panics), and its merge step slows down on
//!   multi-MiB words.
//! - A run of one whitespace character longer than two [`WINDOW`]s is counted one window at
//!   a time and multiplied: both tables split long runs periodically (a token per 128 spaces,
//!   16 or 32 newlines, 16 tabs, all of which divide the window), so the count stays exact.
//! - A stretch with no boundary longer than [`MAX_STRETCH`] bytes (a huge single "word") is
//!   cut anyway; the count is then off by about a token per cut, and flagged inexact.
//! - One [`Tally`] spends at most [`EXACT_BUDGET`] on exact counting; what comes after is
//!   extrapolated from the tokens per byte measured so far, and flagged inexact.
//! - A tokenizer panic is caught; the piece is estimated at [`BYTES_PER_TOKEN`] and flagged.
//!
//! The BPE tables are loaded once per process, when first needed, and shared: each costs
//! 0.16-0.27 s and 24-46 MiB (BENCHMARKS.md), which a proxy whose providers report usage
//! never pays. Async
//! callers go through [`spawn_count`], which keeps counting off the async workers and caps
//! how many counts run at once, or call [`Encoding::load`] before counting inline.

use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};
use tiktoken_rs::CoreBPE;
use tokio::sync::Semaphore;

/// Pieces handed to the tokenizer are cut at the first boundary past this many bytes.
const CHUNK: usize = 8 * 1024;
/// Longest stretch without a boundary handed to the tokenizer whole; more than the two
/// windows of whitespace a long run may leave in front of a word.
const MAX_STRETCH: usize = 16 * 1024;
/// Whitespace runs longer than this are counted window by window. A multiple of every
/// whitespace token length in both tables (128 spaces, 32 newlines, 16 tabs).
const WINDOW: usize = 4096;
/// Work units one tally spends on exact counts: a unit is one token produced, or one byte
/// of a piece cut without a boundary (those cost the merge step more per byte). A count
/// spending it took 10-19 ms in a release build; exact counts past that cost far more than
/// they are worth (16 MiB of one word: 10 s in tiktoken-rs). See `counting_cost` below and
/// BENCHMARKS.md.
const EXACT_BUDGET: u64 = 100_000;
/// Tokens per byte assumed when nothing has been counted to measure it from.
pub const BYTES_PER_TOKEN: u64 = 4;

/// Which BPE table approximates a model's tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

impl Encoding {
    /// o200k for the GPT-4o / o-series / GPT-4.1 / GPT-5 families, cl100k for everything else
    /// (older OpenAI models, and as the closest public table for Anthropic and open models).
    pub fn for_model(model: &str) -> Encoding {
        let m = model
            .rsplit('/')
            .next()
            .unwrap_or(model)
            .to_ascii_lowercase();
        let o200k = m.starts_with("gpt-4o")
            || m.starts_with("gpt-4.1")
            || m.starts_with("gpt-4.5")
            || m.starts_with("gpt-5")
            || m.starts_with("chatgpt-4o")
            || m.starts_with("gpt-oss")
            || (m.starts_with('o') && m.as_bytes().get(1).is_some_and(u8::is_ascii_digit));
        if o200k {
            Encoding::O200k
        } else {
            Encoding::Cl100k
        }
    }

    fn table(self) -> &'static OnceLock<CoreBPE> {
        static O200K: OnceLock<CoreBPE> = OnceLock::new();
        static CL100K: OnceLock<CoreBPE> = OnceLock::new();
        match self {
            Encoding::O200k => &O200K,
            Encoding::Cl100k => &CL100K,
        }
    }

    /// The table, loaded now if it was not (blocking: see [`Encoding::load`]).
    pub fn bpe(self) -> &'static CoreBPE {
        self.table().get_or_init(|| match self {
            Encoding::O200k => tiktoken_rs::o200k_base().expect("bundled o200k table loads"),
            Encoding::Cl100k => tiktoken_rs::cl100k_base().expect("bundled cl100k table loads"),
        })
    }

    pub fn is_loaded(self) -> bool {
        self.table().get().is_some()
    }

    /// Loads the table on a blocking thread if it is not loaded yet, so the request that
    /// first needs it waits for the load and the async worker it runs on serves others.
    pub async fn load(self) {
        if !self.is_loaded() {
            let _ = tokio::task::spawn_blocking(move || {
                self.bpe();
            })
            .await;
        }
    }

    /// Number of tokens in `text`, within one tally's budget (see [`Tally`]). Special-token
    /// markers are counted as plain text.
    pub fn count(self, text: &str) -> u64 {
        let mut tally = Tally::new(self);
        tally.add_text(text);
        tally.count().tokens
    }

    /// The tokenizer on one piece; `None` if it panicked.
    fn tokenize(self, piece: &str) -> Option<u64> {
        let bpe = self.bpe();
        catch_unwind(AssertUnwindSafe(|| bpe.encode_ordinary(piece).len() as u64)).ok()
    }
}

/// A token count, and whether every part of it was counted by the rules rather than
/// extrapolated, cut short or guessed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub tokens: u64,
    pub exact: bool,
}

/// Counts the texts of one request or response, spending a bounded amount of work.
#[derive(Debug)]
pub struct Tally {
    enc: Encoding,
    tokens: u64,
    exact: bool,
    budget: u64,
    /// Bytes and tokens counted exactly, for extrapolating past the budget.
    sampled_bytes: u64,
    sampled_tokens: u64,
}

impl Tally {
    pub fn new(enc: Encoding) -> Tally {
        Tally {
            enc,
            tokens: 0,
            exact: true,
            budget: EXACT_BUDGET,
            sampled_bytes: 0,
            sampled_tokens: 0,
        }
    }

    pub fn encoding(&self) -> Encoding {
        self.enc
    }

    /// Adds tokens known by rule (message overheads, an image of known size).
    pub fn add(&mut self, tokens: u64) {
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// Adds tokens that are a guess (an image of unknown size), flagging the count inexact.
    pub fn add_guess(&mut self, tokens: u64) {
        self.add(tokens);
        self.exact = false;
    }

    pub fn add_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.budget == 0 {
            self.extrapolate(text.len());
            return;
        }
        let mut done = 0;
        let flow = split(text, &mut |piece| {
            if self.budget == 0 {
                return ControlFlow::Break(());
            }
            done += piece.len();
            self.count_piece(piece);
            ControlFlow::Continue(())
        });
        if flow.is_break() {
            self.extrapolate(text.len() - done);
        }
    }

    pub fn count(&self) -> Count {
        Count {
            tokens: self.tokens,
            exact: self.exact,
        }
    }

    fn count_piece(&mut self, piece: Piece<'_>) {
        let (text, times, exact) = match piece {
            Piece::Whole(s) => (s, 1, true),
            Piece::Cut(s) => (s, 1, false),
            Piece::Repeat { unit, times } => (unit, times, true),
        };
        let Some(n) = self.enc.tokenize(text) else {
            tracing::warn!(
                bytes = text.len(),
                "tokenizer failed on a piece of text; estimated from its length"
            );
            self.add_guess((text.len() as u64 * times).div_ceil(BYTES_PER_TOKEN));
            self.budget = self.budget.saturating_sub(text.len() as u64);
            return;
        };
        self.add(n * times);
        self.exact &= exact;
        let cost = if exact { n } else { text.len() as u64 };
        self.budget = self.budget.saturating_sub(cost.max(1));
        // Whitespace runs say nothing about the text around them.
        if times == 1 {
            self.sampled_bytes += text.len() as u64;
            self.sampled_tokens += n;
        }
    }

    fn extrapolate(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        let tokens = if self.sampled_bytes == 0 {
            bytes.div_ceil(BYTES_PER_TOKEN)
        } else {
            let t = u128::from(bytes) * u128::from(self.sampled_tokens);
            u64::try_from(t.div_ceil(u128::from(self.sampled_bytes))).unwrap_or(u64::MAX)
        };
        self.add_guess(tokens);
    }
}

/// A piece of text to count on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    /// Ends where the tokenizer would end a token anyway: counts add up exactly.
    Whole(&'a str),
    /// Cut where the tokenizer might not: the count may be off by about a token.
    Cut(&'a str),
    /// `times` windows of a run of one whitespace character, counted once.
    Repeat { unit: &'a str, times: u64 },
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match *self {
            Piece::Whole(s) | Piece::Cut(s) => s.len(),
            Piece::Repeat { unit, times } => unit.len() * times as usize,
        }
    }
}

/// Whether the tokenizer's pre-split pattern (o200k and cl100k alike) always ends a token
/// between `a` and `b`. Its alternatives are: letters with one optional leading
/// non-letter, non-digit, non-newline character (and, after them, an apostrophe
/// contraction); one to three digits; punctuation with an optional leading space and
/// trailing newlines (and slashes); and whitespace runs, which look ahead past themselves.
/// So a token never spans:
/// - a non-whitespace character followed by whitespace other than `\r` and `\n`;
/// - a letter or digit followed by `\r` or `\n` (only punctuation takes newlines along);
/// - a digit next to a non-digit;
/// - a letter followed by punctuation other than an apostrophe.
///
/// The last two are only checked for ASCII: Unicode letter, mark and number classes differ
/// between the two tables and are not needed for a bounded piece size.
fn is_boundary(a: char, b: char) -> bool {
    if a.is_whitespace() {
        return false;
    }
    if b.is_whitespace() {
        return (b != '\r' && b != '\n') || a.is_ascii_alphanumeric();
    }
    if !a.is_ascii() || !b.is_ascii() {
        return false;
    }
    if a.is_ascii_digit() != b.is_ascii_digit() {
        return true;
    }
    a.is_ascii_alphabetic() && b.is_ascii_punctuation() && b != '\''
}

/// [`is_boundary`] of every pair of ASCII characters, a bit per second character: the scan
/// asks for every character of a text, and the branches cost more than the lookup.
fn ascii_boundaries() -> &'static [u128; 128] {
    static TABLE: OnceLock<[u128; 128]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0u128; 128];
        for a in 0..128u8 {
            for b in 0..128u8 {
                if is_boundary(char::from(a), char::from(b)) {
                    table[usize::from(a)] |= 1 << b;
                }
            }
        }
        table
    })
}

/// Cuts `text` into pieces of bounded size, in order, until `f` breaks.
fn split<'a>(text: &'a str, f: &mut dyn FnMut(Piece<'a>) -> ControlFlow<()>) -> ControlFlow<()> {
    // Too short for a cut or a long run: one piece, without the scan (which costs about 8%
    // of counting a 1 KiB prompt).
    if text.len() <= WINDOW {
        return f(Piece::Whole(text));
    }
    let mut start = 0;
    // Last boundary after `start`; 0 when there is none.
    let mut boundary = 0;
    let mut run_start: Option<usize> = None;
    let ascii = ascii_boundaries();
    // Whitespace is never followed by a boundary, so it stands for "no character yet".
    let mut prev = ' ';
    for (i, c) in text.char_indices() {
        let cut = if (prev as u32 | c as u32) < 128 {
            ascii[prev as usize] >> (c as u32) & 1 == 1
        } else {
            is_boundary(prev, c)
        };
        if cut {
            boundary = i;
        }
        prev = c;
        if c.is_whitespace() {
            run_start.get_or_insert(i);
            continue;
        }
        if let Some(rs) = run_start.take()
            && i - rs > WINDOW
        {
            start = long_run(text, start, boundary == rs, rs, i, f)?;
            boundary = 0;
        }
        if i - start >= CHUNK && boundary > start {
            f(Piece::Whole(&text[start..boundary]))?;
            start = boundary;
        } else if i - start.max(boundary) >= MAX_STRETCH {
            f(Piece::Cut(&text[start..i]))?;
            start = i;
        }
    }
    if let Some(rs) = run_start
        && text.len() - rs > WINDOW
    {
        start = long_run(text, start, boundary == rs, rs, text.len(), f)?;
    }
    if start < text.len() {
        f(Piece::Whole(&text[start..]))?;
    }
    ControlFlow::Continue(())
}

/// Emits the text before a long whitespace run `[rs, re)` and the run's windows, and
/// returns where the rest starts.
///
/// A run of one character is tokenized periodically once it is a few hundred long (each
/// further 128 spaces, 16 tabs or 16/32 newlines add one token), but not additively: 4097
/// tabs are 255 tokens of 16 and one of 17. So the windows taken out are counted alone
/// while at least one window's worth stays with the rest, where the run's end is
/// tokenized in its context.
fn long_run<'a>(
    text: &'a str,
    start: usize,
    clean_start: bool,
    rs: usize,
    re: usize,
    f: &mut dyn FnMut(Piece<'a>) -> ControlFlow<()>,
) -> ControlFlow<(), usize> {
    let run = &text.as_bytes()[rs..re];
    let uniform = matches!(run[0], b' ' | b'\t' | b'\n') && run.iter().all(|&b| b == run[0]);
    let windows = if uniform {
        (run.len() - 1) / WINDOW - 1
    } else {
        (run.len() - 1) / WINDOW
    };
    if windows == 0 {
        return ControlFlow::Continue(start);
    }
    if rs > start {
        let before = &text[start..rs];
        f(if clean_start {
            Piece::Whole(before)
        } else {
            Piece::Cut(before)
        })?;
    }
    if uniform {
        f(Piece::Repeat {
            unit: &text[rs..rs + WINDOW],
            times: windows as u64,
        })?;
        return ControlFlow::Continue(rs + windows * WINDOW);
    }
    let mut pos = rs;
    while re - pos > WINDOW {
        let mut cut = pos + WINDOW;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        f(Piece::Cut(&text[pos..cut]))?;
        pos = cut;
    }
    ControlFlow::Continue(pos)
}

/// Counts allowed to run at once: one per core, so counting bursts cannot starve the
/// proxy of CPU for longer than one budget per core.
fn permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(cores))
    })
}

/// Runs a counting closure on the blocking pool, waiting for a free counting slot first.
pub async fn spawn_count<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = Arc::clone(permits())
        .acquire_owned()
        .await
        .expect("the counting semaphore is never closed");
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    });
    match task.await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded(enc: Encoding, text: &str) -> u64 {
        enc.bpe().encode_ordinary(text).len() as u64
    }

    fn pieces(text: &str) -> Vec<Piece<'_>> {
        let mut out = Vec::new();
        let _ = split(text, &mut |p| {
            out.push(p);
            ControlFlow::Continue(())
        });
        out
    }

    /// Mixed text of the kinds prompts carry, long enough to be cut into many pieces.
    fn sample_texts() -> Vec<String> {
        let prose = "The quick brown fox, who isn't lazy, jumps over 1234567 dogs.\n\
                     Ça coûte 12,50 € — naïve café; 東京は晴れ。  Tabs\tand  spaces.\r\n";
        let code = "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n\n";
        let json = r#"{"id":12345,"name":"widget","tags":["a","b"],"price":9.99,"url":"https://x.io/a/b?c=d"}"#;
        let mut b64 = String::new();
        let mut x: u32 = 7;
        for _ in 0..40_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            b64.push(alphabet[(x >> 16) as usize % 64] as char);
        }
        vec![
            prose.repeat(400),
            code.repeat(400),
            json.repeat(300),
            b64,
            format!(
                "{}{}{}",
                prose.repeat(60),
                " ".repeat(3000),
                prose.repeat(60)
            ),
            "x".repeat(20_000),
        ]
    }

    #[test]
    fn picks_encoding_by_family() {
        assert_eq!(Encoding::for_model("gpt-4o-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("o3-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("openai/gpt-5"), Encoding::O200k);
        assert_eq!(Encoding::for_model("gpt-3.5-turbo"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("claude-sonnet-4-5"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("omni-x"), Encoding::Cl100k);
    }

    #[test]
    fn counts_text() {
        assert_eq!(Encoding::O200k.count(""), 0);
        assert_eq!(Encoding::O200k.count("hello world"), 2);
    }

    #[test]
    fn pieces_cover_the_text_in_order() {
        for text in sample_texts() {
            let joined: String = pieces(&text)
                .iter()
                .map(|p| match *p {
                    Piece::Whole(s) | Piece::Cut(s) => s.to_string(),
                    Piece::Repeat { unit, times } => unit.repeat(times as usize),
                })
                .collect();
            assert_eq!(joined, text);
        }
    }

    #[test]
    fn bounded_count_equals_the_tokenizers_on_ordinary_text() {
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            for text in sample_texts().iter().filter(|t| !t.starts_with("xxx")) {
                let mut tally = Tally::new(enc);
                tally.add_text(text);
                let n = tally.count();
                assert!(pieces(text).len() > 1, "the sample must exercise the cuts");
                assert_eq!(n.tokens, unbounded(enc, text), "{enc:?} {}", &text[..40]);
                assert!(n.exact, "{enc:?} {}", &text[..40]);
            }
        }
    }

    #[test]
    fn texts_up_to_a_window_are_one_piece_with_the_same_count() {
        let prose = "The quick brown fox, who isn't lazy, jumps over 1234567 dogs.\n";
        let texts = [
            prose.repeat(WINDOW / prose.len() + 1),
            " ".repeat(WINDOW + 1),
            "\t \n".repeat(WINDOW / 3 + 1),
            format!("a{}b", " \u{a0}".repeat(WINDOW / 2)),
        ];
        for text in &texts {
            for len in [WINDOW - 1, WINDOW, WINDOW + 1] {
                let mut cut = len.min(text.len());
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                let text = &text[..cut];
                let short = text.len() <= WINDOW;
                if short {
                    assert_eq!(pieces(text), [Piece::Whole(text)]);
                }
                for enc in [Encoding::O200k, Encoding::Cl100k] {
                    let mut tally = Tally::new(enc);
                    tally.add_text(text);
                    let n = tally.count();
                    // Past a window, a run of mixed whitespace is cut and flagged.
                    assert!(n.exact || !short, "{enc:?} {len}");
                    if n.exact {
                        assert_eq!(n.tokens, unbounded(enc, text), "{enc:?} {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn bounded_count_equals_the_tokenizers_on_random_text() {
        // Fragments chosen to sit on both sides of every boundary rule.
        let fragments = [
            "a", "Zq", "é", "東京", "1", "22", "333", ".", "'", "'s", "'T", ",", "-", "/", " ",
            "  ", "\t", "\n", "\r\n", "\n\n", "\u{a0}", "\u{3000}", "😀", "ﬁ", "\u{301}", "½", "«",
            "$", "_", "#",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..4 {
            let mut text = String::new();
            while text.len() < 60_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push_str(fragments[(x % fragments.len() as u64) as usize]);
            }
            for enc in [Encoding::O200k, Encoding::Cl100k] {
                let mut tally = Tally::new(enc);
                tally.add_text(&text);
                let n = tally.count();
                assert_eq!(n.tokens, unbounded(enc, &text), "{enc:?} round {round}");
                assert!(n.exact);
                assert_eq!(
                    cut_at_every_boundary(enc, &text),
                    n.tokens,
                    "{enc:?} round {round}"
                );
            }
        }
    }

    /// The sum of the counts of the text cut at every boundary.
    fn cut_at_every_boundary(enc: Encoding, text: &str) -> u64 {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut sum = 0;
        let mut last = 0;
        for w in chars.windows(2) {
            if is_boundary(w[0].1, w[1].1) {
                sum += unbounded(enc, &text[last..w[1].0]);
                last = w[1].0;
            }
        }
        sum + unbounded(enc, &text[last..])
    }

    #[test]
    fn boundaries_hold_for_every_cut_position() {
        let text = "a1b2 c3. d's e-f g?h 12345678 (x) 'q' z.\tw\u{a0}v x9!y ok\nno.\nA1\r\nb";
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            assert_eq!(
                cut_at_every_boundary(enc, text),
                unbounded(enc, text),
                "{enc:?}"
            );
        }
    }

    #[test]
    fn long_whitespace_runs_are_exact() {
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            for ws in [" ", "\t", "\n"] {
                for n in [4097, 8193, 8194, 12_289, 50_001, 100_000] {
                    for text in [
                        format!("{}hello world", ws.repeat(n)),
                        format!("hello{}", ws.repeat(n)),
                        format!("say{}it. Now", ws.repeat(n)),
                    ] {
                        let mut tally = Tally::new(enc);
                        tally.add_text(&text);
                        let n = tally.count();
                        assert_eq!(n.tokens, unbounded(enc, &text), "{enc:?} {ws:?}");
                        assert!(n.exact);
                    }
                }
            }
        }
    }

    #[test]
    fn a_million_spaces_are_counted_not_panicked_on() {
        // Runs of 128 spaces or 16 tabs are one token each, so the count of a run of n is the
        // tokenizer's count of a run of n - k blocks, plus k.
        let k = 7000;
        for enc in [Encoding::O200k, Encoding::Cl100k] {
            for (ws, block) in [(" ", 128), ("\t", 16)] {
                let before = |n: usize| format!("{}hello", ws.repeat(n));
                let after = |n: usize| format!("hello{}", ws.repeat(n));
                for leading in [true, false] {
                    let text = |n| if leading { before(n) } else { after(n) };
                    let n = 1_000_000;
                    let expected = unbounded(enc, &text(n - k * block)) + k as u64;
                    let mut tally = Tally::new(enc);
                    tally.add_text(&text(n));
                    assert_eq!(
                        tally.count(),
                        Count {
                            tokens: expected,
                            exact: true
                        },
                        "{enc:?}"
                    );
                }
                // The tokenizer alone gives up on a leading run this long.
                assert_eq!(enc.tokenize(&before(1_000_000)), None, "{enc:?}");
            }
        }
    }

    #[test]
    fn a_tokenizer_panic_gives_a_flagged_fallback() {
        let text = format!("{}hello", " ".repeat(1_000_000));
        let mut tally = Tally::new(Encoding::O200k);
        // The piece as the tokenizer alone would see it, uncut.
        tally.count_piece(Piece::Whole(&text));
        let n = tally.count();
        assert!(!n.exact);
        assert_eq!(n.tokens, (text.len() as u64).div_ceil(BYTES_PER_TOKEN));
    }

    #[test]
    fn huge_inputs_are_extrapolated_past_the_budget() {
        let repeated = "hello ".repeat((16 << 20) / 6);
        let word = "a".repeat(2 << 20);
        for (text, slack) in [(&repeated, 0.001), (&word, 0.01)] {
            let exact = text.len() as f64 * unbounded(Encoding::O200k, &text[..1 << 16]) as f64
                / (1 << 16) as f64;
            let mut tally = Tally::new(Encoding::O200k);
            tally.add_text(text);
            let n = tally.count();
            assert!(!n.exact);
            let err = (n.tokens as f64 - exact).abs() / exact;
            assert!(err < slack, "{} vs {exact}", n.tokens);
        }
    }

    #[test]
    fn the_budget_is_shared_by_the_texts_of_one_tally() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(2_000);
        let per_text = unbounded(Encoding::Cl100k, &text);
        let fits = (EXACT_BUDGET / per_text) as usize;
        let mut tally = Tally::new(Encoding::Cl100k);
        for _ in 0..fits {
            tally.add_text(&text);
        }
        assert!(tally.count().exact, "{fits} texts fit the budget");
        for _ in 0..2 * fits {
            tally.add_text(&text);
        }
        let n = tally.count();
        assert!(!n.exact, "{} texts do not", 3 * fits);
        let expected = 3 * fits as u64 * per_text;
        assert!(
            n.tokens.abs_diff(expected) <= expected / 10_000,
            "{n:?} vs {expected}"
        );
    }

    #[test]
    fn guesses_flag_the_count() {
        let mut tally = Tally::new(Encoding::O200k);
        tally.add(10);
        assert!(tally.count().exact);
        tally.add_guess(765);
        assert_eq!(
            tally.count(),
            Count {
                tokens: 775,
                exact: false
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_run_at_most_one_per_core() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                tokio::spawn(spawn_count(|| {
                    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                    PEAK.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    RUNNING.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // At most one per core. (Not exactly that many: other tests in the same process
        // may hold slots of the process-wide cap.)
        let peak = PEAK.load(Ordering::SeqCst);
        assert!(
            (1..=cores).contains(&peak),
            "{peak} counts ran at once on {cores} cores"
        );
    }

    /// The cost of counting, bounded against tiktoken-rs alone, printed as a table:
    /// `cargo test --release --lib -- --ignored --nocapture counting_cost` (BENCHMARKS.md).
    #[test]
    #[ignore = "a measurement, not a check: run in release"]
    fn counting_cost() {
        use std::time::Instant;
        let letters: String = (0..2 << 20)
            .map(|i: u32| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
            .collect();
        let inputs = [
            ("2 MiB single word", "a".repeat(2 << 20)),
            ("2 MiB random letters", letters),
            ("16 MiB `hello ` repeated", "hello ".repeat((16 << 20) / 6)),
            ("16 MiB one word", "word".repeat(4 << 20)),
            (
                "1M spaces before text",
                format!("{}hello world", " ".repeat(1_000_000)),
            ),
            (
                "400 KiB prose",
                "The quick brown fox jumps over the lazy dog. ".repeat(9_100),
            ),
        ];
        println!(
            "| input | encoding | tiktoken-rs alone | bounded | tokens (alone / bounded, exact) |"
        );
        println!("|---|---|---|---|---|");
        for (name, text) in &inputs {
            for enc in [Encoding::O200k, Encoding::Cl100k] {
                let t = Instant::now();
                let alone = catch_unwind(AssertUnwindSafe(|| unbounded(enc, text)));
                let alone_took = t.elapsed();
                let t = Instant::now();
                let mut tally = Tally::new(enc);
                tally.add_text(text);
                let took = t.elapsed();
                let count = tally.count();
                let alone = match alone {
                    Ok(n) => format!("{n} in {alone_took:.2?}"),
                    Err(_) => format!("panics after {alone_took:.2?}"),
                };
                println!(
                    "| {name} | {enc:?} | {alone} | {took:.2?} | {} ({}) |",
                    count.tokens,
                    if count.exact { "exact" } else { "estimate" }
                );
            }
        }
    }
}
