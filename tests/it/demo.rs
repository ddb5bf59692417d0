//! `tollgate demo`: the whole path offline, ending in a spend report from the ledger, with
//! the savings of routing and of the cache.

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
    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("team"))
        .expect("a header row")
        .split_whitespace()
        .collect();
    let total: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("TOTAL"))
        .expect("a total row")
        .split_whitespace()
        .collect();
    // TOTAL spans the three key columns.
    let column = |name: &str| -> f64 {
        let i = header.iter().position(|h| *h == name).unwrap() - 2;
        total[i].parse().unwrap()
    };
    assert!(column("cost_usd") > 0.0, "{total:?}");
    assert!(
        column("saved_usd") > 0.0,
        "the cheap-first policy saves: {stdout}"
    );
    assert!(stdout.contains("Policy cheap-first:"), "{stdout}");
    assert!(
        column("cache_hits") > 0.0 && column("cache_saved_usd") > 0.0,
        "repeated requests are answered from the cache: {stdout}"
    );
    assert!(stdout.contains("answered from the cache"), "{stdout}");
    // The ledger it reports from is kept and holds every request.
    let records =
        tollgate::ledger::read_all::<tollgate::record::Record>(&dir.path().join("data/ledger"))
            .unwrap();
    assert_eq!(records.len(), 60);
    assert!(records.iter().any(|r| r.stream) && records.iter().any(|r| !r.stream));
    let routed: Vec<_> = records
        .iter()
        .filter(|r| r.policy == "cheap-first")
        .collect();
    assert!(
        routed
            .iter()
            .any(|r| r.escalations == 1 && r.model == "gpt-5")
            && routed
                .iter()
                .any(|r| r.escalations == 0 && r.model.starts_with("gpt-5-mini")),
        "some cheap-first requests escalate, others do not"
    );
    // Hits cost nothing and carry what they saved.
    let hits: Vec<_> = records.iter().filter(|r| r.cache_hit).collect();
    assert!(!hits.is_empty());
    for hit in hits {
        assert_eq!(hit.cost_usd, Some(tollgate::money::NanoUsd::ZERO));
        assert_eq!(
            (hit.input_tokens, hit.output_tokens, hit.attempts),
            (0, 0, 0)
        );
        assert!(hit.saved_cost_usd.unwrap().0 > 0 && hit.saved_output_tokens > 0);
    }
}
