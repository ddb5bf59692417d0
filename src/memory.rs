//! Giving freed memory back to the system.
//!
//! glibc's malloc keeps what worker threads free in their arenas, and a burst of connections
//! leaves those arenas fragmented: with 2,000 idle keep-alive connections the proxy grows from
//! 90 to 152 MiB and stays at 152 MiB after they close (`bench/idle-rss.sh`). `malloc_trim(0)`
//! returns every whole free page of every arena (back to 95 MiB). A thread calls it every
//! [`PERIOD`]; a call measured 7.2 ms right after those connections closed and 0.5 ms under
//! load (BENCHMARKS.md), each arena locked only while it is trimmed. jemalloc returns memory by itself, but its
//! build needs `make`, which a machine with only a C compiler lacks.

use std::time::Duration;

/// How often freed memory is returned.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Starts the thread that returns freed memory every [`PERIOD`]; a no-op where the C
/// library is not glibc.
pub fn spawn_trimmer() -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(PERIOD);
                // SAFETY: malloc_trim only releases memory malloc holds free; it takes each
                // arena's lock, so it is safe while other threads allocate.
                unsafe { libc::malloc_trim(0) };
            }
        })?;
    Ok(())
}
