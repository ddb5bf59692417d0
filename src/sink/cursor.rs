//! The sink's durable position in the ledger.
//!
//! Before a batch is sent its exact byte range is saved as `pending`; after ClickHouse
//! acknowledges it, the committed offset moves past it. A restart replays a pending batch
//! byte for byte with the same deduplication token, so it lands exactly once.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub segment: u64,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Segment and byte offset up to which everything is shipped.
    pub segment: u64,
    pub offset: u64,
    /// A batch that was (maybe) sent but not yet acknowledged.
    pub pending: Option<Range>,
}

pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    pub fn new(path: PathBuf) -> CursorFile {
        CursorFile { path }
    }

    pub fn load(&self) -> io::Result<Cursor> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the file atomically and durably: write aside, fsync, rename, fsync the dir.
    pub fn save(&self, cursor: &Cursor) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(cursor).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = CursorFile::new(dir.path().join("sink/clickhouse.cursor"));
        assert_eq!(file.load().unwrap(), Cursor::default());
        let c = Cursor {
            segment: 3,
            offset: 120,
            pending: Some(Range {
                segment: 3,
                start: 120,
                end: 900,
            }),
        };
        file.save(&c).unwrap();
        assert_eq!(file.load().unwrap(), c);
    }
}
