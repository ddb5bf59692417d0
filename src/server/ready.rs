//! The ready line: once every listener is bound, `tollgate serve` prints one line on standard
//! output, `tollgate ready proxy=127.0.0.1:4000 admin=127.0.0.1:9464` (and
//! `tollgate sim-provider` prints `tollgate ready sim=ADDR`). Listen addresses may use port 0:
//! the line says which ports the system gave. Each socket is bound once and is listening when
//! the line appears (connections queue until the server answers them), so a script or test
//! reads its ports from here instead of picking a free port, closing it and hoping nobody
//! takes it before the server binds it.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

const PREFIX: &str = "tollgate ready";

/// The listeners named on a ready line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    listeners: Vec<(String, SocketAddr)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("the process ended without printing its ready line")]
    Exited,
    #[error("no ready line within {0:?}")]
    Timeout(Duration),
}

impl Ready {
    pub fn new<'a>(listeners: impl IntoIterator<Item = (&'a str, SocketAddr)>) -> Ready {
        Ready {
            listeners: listeners
                .into_iter()
                .map(|(name, addr)| (name.to_string(), addr))
                .collect(),
        }
    }

    /// The address of the listener called `name` (`proxy`, `admin`, `sim`).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Parses a ready line; `None` for any other line.
    pub fn parse(line: &str) -> Option<Ready> {
        let rest = line.trim_end().strip_prefix(PREFIX)?;
        let listeners = rest
            .split_whitespace()
            .map(|pair| {
                let (name, addr) = pair.split_once('=')?;
                Some((name.to_string(), addr.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        (!listeners.is_empty()).then_some(Ready { listeners })
    }

    /// Prints the line on standard output. A closed stdout is no reason to stop serving.
    pub fn announce(&self) {
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{self}").and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "could not print the ready line");
        }
    }

    /// Reads a child's standard output until its ready line. The rest of the output is read
    /// and discarded on a thread of its own, so the child never writes into a full or closed
    /// pipe.
    pub fn wait_for(
        stdout: impl Read + Send + 'static,
        timeout: Duration,
    ) -> Result<Ready, ReadyError> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ready) = Ready::parse(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(ready);
                }
            }
        });
        rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => ReadyError::Timeout(timeout),
            mpsc::RecvTimeoutError::Disconnected => ReadyError::Exited,
        })
    }
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        for (name, addr) in &self.listeners {
            write!(f, " {name}={addr}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_round_trips() {
        let ready = Ready::new([
            ("proxy", "127.0.0.1:4000".parse().unwrap()),
            ("admin", "[::1]:9464".parse().unwrap()),
        ]);
        let line = ready.to_string();
        assert_eq!(line, "tollgate ready proxy=127.0.0.1:4000 admin=[::1]:9464");
        let back = Ready::parse(&format!("{line}\n")).unwrap();
        assert_eq!(back, ready);
        assert_eq!(back.addr("admin"), Some("[::1]:9464".parse().unwrap()));
        assert_eq!(back.addr("sim"), None);
    }

    #[test]
    fn other_lines_are_not_ready_lines() {
        for line in [
            "",
            "tollgate ready",
            "tollgate ready proxy=localhost:4000",
            "tollgate ready proxy",
            "simulated provider on http://127.0.0.1:4100",
        ] {
            assert_eq!(Ready::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn waiting_ends_with_the_output() {
        let out = b"starting\ntollgate ready sim=127.0.0.1:4100\nmore\n".as_slice();
        let ready = Ready::wait_for(out, Duration::from_secs(5)).unwrap();
        assert_eq!(ready.addr("sim"), Some("127.0.0.1:4100".parse().unwrap()));
        let silent = Ready::wait_for(b"no line here\n".as_slice(), Duration::from_secs(5));
        assert!(matches!(silent, Err(ReadyError::Exited)));
    }
}
