//! Reading batches of complete records out of ledger segments.

use super::cursor::Range;
use crate::ledger;
use crate::record::Record;
use bytes::Bytes;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes read at most for one batch.
const MAX_BATCH_BYTES: u64 = 32 * 1024 * 1024;

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
/// complete line yet (or the segment is gone).
pub fn read_from(
    dir: &Path,
    segment: u64,
    offset: u64,
    max_rows: usize,
) -> io::Result<Option<Batch>> {
    let Some(bytes) = read_bytes(dir, segment, offset, MAX_BATCH_BYTES)? else {
        return Ok(None);
    };
    let mut end = 0;
    let mut lines = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            end = i + 1;
            lines += 1;
            if lines == max_rows {
                break;
            }
        }
    }
    if end == 0 {
        return Ok(None);
    }
    Ok(Some(split(
        &bytes[..end],
        Range {
            segment,
            start: offset,
            end: offset + end as u64,
        },
    )))
}

/// Exactly the bytes of `range`, for replaying a pending batch.
pub fn read_range(dir: &Path, range: Range) -> io::Result<Batch> {
    let bytes = read_bytes(dir, range.segment, range.start, range.end - range.start)?
        .filter(|b| b.len() as u64 == range.end - range.start)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "pending batch no longer in the ledger",
            )
        })?;
    Ok(split(&bytes, range))
}

fn read_bytes(dir: &Path, segment: u64, offset: u64, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut f = match std::fs::File::open(segment_path(dir, segment)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

fn split(bytes: &[u8], range: Range) -> Batch {
    let mut rows = Vec::with_capacity(bytes.len());
    let mut row_count = 0;
    let mut bad_lines = Vec::new();
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if serde_json::from_slice::<Record>(line).is_ok() {
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
