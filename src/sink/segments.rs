//! Reading batches of complete records out of ledger segments.

use super::cursor::Range;
use crate::ledger::{self, Stream};
use bytes::Bytes;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes read at most for one batch.
const MAX_BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Bytes read at a time while looking for a batch's last line.
const READ_CHUNK: u64 = 1024 * 1024;

pub struct Batch {
    pub range: Range,
    /// Valid records, one JSON line each, as written in the ledger.
    pub rows: Bytes,
    pub row_count: usize,
    /// Lines that are not records (they are set aside, never sent).
    pub bad_lines: Vec<Vec<u8>>,
}

impl Batch {
    pub fn line_count(&self) -> usize {
        self.row_count + self.bad_lines.len()
    }
}

pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(ledger::segment_file_name(segment))
}

/// Up to `max_rows` complete lines of `segment` from `offset`; `None` when there is no
/// complete line yet (or the segment is gone). Reads in chunks, so a batch costs about its
/// own size, not [`MAX_BATCH_BYTES`].
pub fn read_from(
    stream: Stream,
    dir: &Path,
    segment: u64,
    offset: u64,
    max_rows: usize,
) -> io::Result<Option<Batch>> {
    let Some(mut file) = open_at(dir, segment, offset)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    let (mut end, mut lines) = (0, 0);
    'read: while (bytes.len() as u64) < MAX_BATCH_BYTES {
        let from = bytes.len();
        let want = READ_CHUNK.min(MAX_BATCH_BYTES - from as u64);
        if (&mut file).take(want).read_to_end(&mut bytes)? == 0 {
            break;
        }
        for (i, b) in bytes[from..].iter().enumerate() {
            if *b == b'\n' {
                end = from + i + 1;
                lines += 1;
                if lines == max_rows {
                    break 'read;
                }
            }
        }
    }
    if end == 0 {
        return Ok(None);
    }
    Ok(Some(split(
        stream,
        &bytes[..end],
        Range {
            segment,
            start: offset,
            end: offset + end as u64,
        },
    )))
}

/// Exactly the bytes of `range`, for replaying a pending batch.
pub fn read_range(stream: Stream, dir: &Path, range: Range) -> io::Result<Batch> {
    let bytes = read_bytes(dir, range.segment, range.start, range.end - range.start)?
        .filter(|b| b.len() as u64 == range.end - range.start)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "pending batch no longer in the ledger",
            )
        })?;
    Ok(split(stream, &bytes, range))
}

fn read_bytes(dir: &Path, segment: u64, offset: u64, max: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(file) = open_at(dir, segment, offset)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    file.take(max).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// The segment's file positioned at `offset`; `None` when it is gone.
fn open_at(dir: &Path, segment: u64, offset: u64) -> io::Result<Option<std::fs::File>> {
    let mut file = match std::fs::File::open(segment_path(dir, segment)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    Ok(Some(file))
}

fn split(stream: Stream, bytes: &[u8], range: Range) -> Batch {
    let mut rows = Vec::with_capacity(bytes.len());
    let mut row_count = 0;
    let mut bad_lines = Vec::new();
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if stream.is_record(line) {
            rows.extend_from_slice(line);
            row_count += 1;
        } else if !line.iter().all(u8::is_ascii_whitespace) {
            bad_lines.push(line.to_vec());
        }
    }
    Batch {
        range,
        rows: rows.into(),
        row_count,
        bad_lines,
    }
}

/// Complete lines from (`segment`, `offset`) to the end of the ledger.
pub fn count_backlog(dir: &Path, segment: u64, offset: u64) -> io::Result<u64> {
    let mut n = 0;
    for (seq, path) in ledger::list_segments(dir)? {
        if seq < segment {
            continue;
        }
        let bytes = std::fs::read(path)?;
        let from = if seq == segment {
            (offset as usize).min(bytes.len())
        } else {
            0
        };
        n += bytes[from..].iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_end_at_the_row_limit_or_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        // 3000 lines of 500 bytes: more than one read chunk; then a torn line.
        let line = format!("{}\n", "x".repeat(499));
        let mut text = line.repeat(3000);
        text.push_str("{\"torn");
        std::fs::write(segment_path(dir.path(), 7), &text).unwrap();

        let b = read_from(Stream::Requests, dir.path(), 7, 0, 2500)
            .unwrap()
            .unwrap();
        assert_eq!((b.line_count(), b.range.end), (2500, 2500 * 500));
        let rest = read_from(Stream::Requests, dir.path(), 7, b.range.end, 10_000)
            .unwrap()
            .unwrap();
        assert_eq!(rest.line_count(), 500);
        assert_eq!(rest.range.end, 3000 * 500, "the torn line waits");
        assert!(
            read_from(Stream::Requests, dir.path(), 7, rest.range.end, 10)
                .unwrap()
                .is_none()
        );
        assert!(
            read_from(Stream::Requests, dir.path(), 8, 0, 10)
                .unwrap()
                .is_none(),
            "no segment"
        );
    }
}
