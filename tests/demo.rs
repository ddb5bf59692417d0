//! `tollgate demo`: the whole path offline, ending in a spend report from the ledger.

use std::process::Command;

#[test]
fn demo_runs_end_to_end_and_reports_spend_per_team() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["demo", "--requests", "60", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the ledger holds 60 records"), "{stdout}");
    for team in ["search", "support", "growth"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(team)),
            "{team} missing:\n{stdout}"
        );
    }
    let total = stdout
        .lines()
        .find(|l| l.starts_with("TOTAL"))
        .expect("a total row");
    let cost: f64 = total.split_whitespace().last().unwrap().parse().unwrap();
    assert!(cost > 0.0, "{total}");
    // The ledger it reports from is kept and holds every request.
    let records =
        tollgate::ledger::read_all::<tollgate::record::Record>(&dir.path().join("data/ledger"))
            .unwrap();
    assert_eq!(records.len(), 60);
    assert!(records.iter().any(|r| r.stream) && records.iter().any(|r| !r.stream));
}
