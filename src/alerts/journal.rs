//! The state file: which alerts were accepted and which webhooks have had them.
//!
//! `STATE_DIR/alerts.jsonl`, one JSON entry a line, each written and fsynced before the step
//! it records goes on: `queued` before any delivery (so a crash cannot lose an accepted
//! alert: it is delivered after the restart, under the same id), then `sent` or `given_up`
//! per webhook, or `claimed_elsewhere` when another replica sends it. A crash between a
//! delivery and its `sent` entry resends that one alert after the restart, with the same id
//! for the receiver to recognise. The file is rewritten at start without the alerts of
//! periods that ended more than [`KEEP_AFTER_RESET`] ago, and a torn last line is skipped.

use super::{Alert, AlertKey};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How long past its period's end an alert is remembered (and claimed in Redis): late spend
/// of an ended period can still cross one of its thresholds.
pub const KEEP_AFTER_RESET: chrono::TimeDelta = chrono::TimeDelta::days(2);

const FILE: &str = "alerts.jsonl";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Entry {
    Queued {
        id: String,
        alert: Alert,
        webhooks: Vec<String>,
    },
    Sent {
        id: String,
        webhook: String,
    },
    GivenUp {
        id: String,
        webhook: String,
    },
    ClaimedElsewhere {
        id: String,
    },
}

/// An accepted alert that some webhooks have not had yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: String,
    pub alert: Alert,
    pub webhooks: Vec<String>,
}

/// What the file says at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every alert accepted in a period not long over, with the end of its period: these
    /// are never queued again.
    pub keys: HashMap<AlertKey, DateTime<Utc>>,
    pub pending: Vec<Pending>,
    /// Lines that did not parse (a write torn by a crash).
    pub skipped_lines: usize,
}

pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: Mutex<Appending>,
    compact_every: usize,
}

struct Appending {
    file: File,
    /// Entries appended since the file was last rewritten.
    entries: usize,
}

/// Entries appended between two rewrites of a running journal, which keep it from growing
/// past the alerts of the periods that matter.
const COMPACT_EVERY: usize = 10_000;

impl Journal {
    /// Reads the file in `dir` (created if missing), rewrites it without alerts of periods
    /// long over, and opens it for appending.
    pub fn open(dir: &Path, now: DateTime<Utc>) -> io::Result<(Journal, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let recovered = rewrite(dir, &path, now)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            path,
            file: Mutex::new(Appending { file, entries: 0 }),
            compact_every: COMPACT_EVERY,
        };
        Ok((journal, recovered))
    }

    /// Appends one entry and waits until it is on disk.
    pub fn append(&self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.file.write_all(&line)?;
        f.file.sync_data()?;
        f.entries += 1;
        if f.entries >= self.compact_every {
            // Under the lock, so no entry is written to the file being replaced.
            f.entries = 0;
            match rewrite(&self.dir, &self.path, Utc::now())
                .and_then(|_| OpenOptions::new().append(true).open(&self.path))
            {
                Ok(file) => f.file = file,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "alert state file not compacted")
                }
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads the journal at `path` and replaces it with the entries that still matter: those of
/// alerts whose period ended less than [`KEEP_AFTER_RESET`] before `now`.
fn rewrite(dir: &Path, path: &Path, now: DateTime<Utc>) -> io::Result<Recovered> {
    let mut recovered = Recovered::default();
    let mut alerts: Vec<Pending> = Vec::new();
    let mut done: HashMap<String, HashSet<String>> = HashMap::new();
    let mut elsewhere: HashSet<String> = HashSet::new();
    match File::open(path) {
        Ok(f) => {
            for line in BufReader::new(f).lines() {
                match serde_json::from_str::<Entry>(&line?) {
                    Ok(Entry::Queued {
                        id,
                        alert,
                        webhooks,
                    }) => alerts.push(Pending {
                        id,
                        alert,
                        webhooks,
                    }),
                    Ok(Entry::Sent { id, webhook } | Entry::GivenUp { id, webhook }) => {
                        done.entry(id).or_default().insert(webhook);
                    }
                    Ok(Entry::ClaimedElsewhere { id }) => {
                        elsewhere.insert(id);
                    }
                    Err(_) => recovered.skipped_lines += 1,
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    alerts.retain(|p| p.alert.resets_at + KEEP_AFTER_RESET > now);

    // The same entries for what is kept, written aside and renamed over the file, so a
    // crash leaves either the old file or the new one.
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut out = io::BufWriter::new(File::create(&tmp)?);
    for p in &alerts {
        recovered.keys.insert(p.alert.key(), p.alert.resets_at);
        write_line(
            &mut out,
            &Entry::Queued {
                id: p.id.clone(),
                alert: p.alert.clone(),
                webhooks: p.webhooks.clone(),
            },
        )?;
        if elsewhere.contains(&p.id) {
            write_line(&mut out, &Entry::ClaimedElsewhere { id: p.id.clone() })?;
            continue;
        }
        let had = done.get(&p.id);
        let mut left = Vec::new();
        for w in &p.webhooks {
            if had.is_some_and(|h| h.contains(w)) {
                let (id, webhook) = (p.id.clone(), w.clone());
                // Sent and given up are alike from here on: neither is tried again.
                write_line(&mut out, &Entry::Sent { id, webhook })?;
            } else {
                left.push(w.clone());
            }
        }
        if !left.is_empty() {
            recovered.pending.push(Pending {
                webhooks: left,
                ..p.clone()
            });
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(recovered)
}

fn write_line(out: &mut impl Write, entry: &Entry) -> io::Result<()> {
    serde_json::to_writer(&mut *out, entry).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::AlertKind;
    use crate::config::Period;
    use crate::money::NanoUsd;
    use chrono::TimeZone;

    fn alert(budget: &str, percent: u32, resets_at: DateTime<Utc>) -> Alert {
        Alert {
            budget: budget.into(),
            kind: AlertKind::Threshold { percent },
            period: Period::Day,
            period_start: resets_at - chrono::TimeDelta::days(1),
            resets_at,
            spend: NanoUsd(8_000_000_000),
            limit: NanoUsd(10_000_000_000),
            scope: vec![("team".into(), "search".into())],
            at: resets_at - chrono::TimeDelta::hours(3),
        }
    }

    fn queued(id: &str, a: &Alert, hooks: &[&str]) -> Entry {
        Entry::Queued {
            id: id.into(),
            alert: a.clone(),
            webhooks: hooks.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn sent(id: &str, hook: &str) -> Entry {
        Entry::Sent {
            id: id.into(),
            webhook: hook.into(),
        }
    }

    #[test]
    fn restart_resumes_what_was_not_delivered_and_remembers_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc.with_ymd_and_hms(2025, 6, 10, 12, 0, 0).unwrap();
        let today = alert("a", 80, now + chrono::TimeDelta::hours(12));
        let other = alert("b", 50, now + chrono::TimeDelta::hours(12));
        let elsewhere = alert("c", 50, now + chrono::TimeDelta::hours(12));
        let old = alert("a", 80, now - chrono::TimeDelta::days(3));
        {
            let (j, r) = Journal::open(dir.path(), now).unwrap();
            assert!(r.keys.is_empty() && r.pending.is_empty());
            for e in [
                queued("1", &today, &["slack", "json"]),
                sent("1", "slack"),
                queued("2", &other, &["slack"]),
                Entry::GivenUp {
                    id: "2".into(),
                    webhook: "slack".into(),
                },
                queued("3", &old, &["slack"]),
                queued("4", &elsewhere, &["slack"]),
                Entry::ClaimedElsewhere { id: "4".into() },
            ] {
                j.append(&e).unwrap();
            }
        }
        // A crash in the middle of a write leaves half a line.
        let path = dir.path().join(FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"op":"sent","id":"1","web"#).unwrap();
        drop(f);

        let (_, r) = Journal::open(dir.path(), now).unwrap();
        assert_eq!(r.skipped_lines, 1);
        let want: HashMap<AlertKey, DateTime<Utc>> = [&today, &other, &elsewhere]
            .map(|a| (a.key(), a.resets_at))
            .into();
        assert_eq!(r.keys, want, "the ended period is forgotten");
        assert_eq!(
            r.pending,
            vec![Pending {
                id: "1".into(),
                alert: today.clone(),
                webhooks: vec!["json".into()],
            }]
        );

        // The rewritten file says the same, without the old period and the torn line.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(r#""id":"3""#), "{text}");
        let (_, again) = Journal::open(dir.path(), now).unwrap();
        assert_eq!((again.keys, again.pending), (r.keys, r.pending));
        assert_eq!(again.skipped_lines, 0);
    }

    #[test]
    fn a_running_journal_is_compacted_and_keeps_what_matters() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let (mut j, _) = Journal::open(dir.path(), now).unwrap();
        j.compact_every = 4;
        let old = alert("old", 80, now - chrono::TimeDelta::days(3));
        let live = alert("live", 80, now + chrono::TimeDelta::hours(5));
        j.append(&queued("1", &old, &["slack"])).unwrap();
        j.append(&sent("1", "slack")).unwrap();
        j.append(&queued("2", &live, &["slack", "json"])).unwrap();
        j.append(&sent("2", "slack")).unwrap();
        // Compacted at the fourth entry; appends go on in the new file.
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        j.append(&sent("2", "json")).unwrap();

        let (_, r) = Journal::open(dir.path(), now).unwrap();
        assert_eq!(r.keys.keys().collect::<Vec<_>>(), [&live.key()]);
        assert!(r.pending.is_empty(), "{:?}", r.pending);
    }
}
