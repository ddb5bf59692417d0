//! Headless Chromium (the Debian package, installed by `scripts/chromium.sh install`): loads a
//! page from a file and returns the DOM it built, or a screenshot. A missing chromium fails
//! the test that needs it, never skips it.

use std::path::Path;
use std::process::{Command, Output};

/// Runs chromium headless on `page` with `args`, through a proxy that refuses every
/// connection: a page that fetched anything from the network would miss it.
fn run(page: &Path, args: &[String]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let dead_proxy = format!("--proxy-server=http://127.0.0.1:{}", super::free_port());
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &dead_proxy,
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    // `timeout` exits 127 when it cannot find the command.
    assert_ne!(
        out.status.code(),
        Some(127),
        "chromium is not installed: run `scripts/chromium.sh install` (as root; Debian's \
         chromium package)"
    );
    assert!(
        out.status.success(),
        "chromium failed on {} ({}):\n{}",
        page.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM chromium built from `page`, serialized.
pub fn dump_dom(page: &Path) -> String {
    String::from_utf8(run(page, &["--dump-dom".into()]).stdout).unwrap()
}

/// A 1280 × `height` screenshot of `page`, written to `png`.
pub fn screenshot(page: &Path, png: &Path, height: u32) {
    run(
        page,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size=1280,{height}"),
        ],
    );
}
