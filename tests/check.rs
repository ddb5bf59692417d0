//! `tollgate check`: every problem reported as FILE:LINE:COL, non-zero exit.

use std::process::Command;

fn check(yaml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["check", "--config"])
        .arg(&path)
        .env_remove("TOLLGATE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (
        out.status.success(),
        text.replace(&format!("{}", path.display()), "tollgate.yaml"),
    )
}

#[test]
fn a_valid_config_passes() {
    let (ok, out) = check(
        "providers:\n  sim:\n    kind: simulated\nmodels:\n  gpt-4o-mini: { provider: sim }\n",
        &[],
    );
    assert!(ok, "{out}");
    assert!(out.contains("ok"));
}

#[test]
fn an_unknown_field_is_located() {
    let (ok, out) = check(
        "providers:\n  sim:\n    kind: simulated\n    colour: blue\n",
        &[],
    );
    assert!(!ok);
    assert!(out.starts_with("tollgate.yaml:4:"), "{out}");
    assert!(out.contains("colour"), "{out}");
}

#[test]
fn a_bad_type_is_located() {
    let (ok, out) = check("max_body_bytes: lots\nproviders: {}\n", &[]);
    assert!(!ok);
    assert!(out.starts_with("tollgate.yaml:1:"), "{out}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_position() {
    let yaml = "\
providers:
  openai:
    kind: openai
    api_key_env: TOLLGATE_TEST_UNSET_VAR
  weird:
    kind: carrier-pigeon
models:
  gpt-4o: { provider: openai }
  claude-x: { provider: nowhere }
keys:
  - name: k1
    sha256: not-hex
";
    let (ok, out) = check(yaml, &[]);
    assert!(!ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tollgate.yaml:4:") && l.contains("TOLLGATE_TEST_UNSET_VAR")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tollgate.yaml:6:") && l.contains("carrier-pigeon")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tollgate.yaml:9:") && l.contains("nowhere")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tollgate.yaml:12:") && l.contains("sha256")),
        "{out}"
    );
}

#[test]
fn a_bad_listen_address_is_located() {
    let (ok, out) = check("providers: {}\nlisten: localhost-4000\n", &[]);
    assert!(!ok);
    assert!(out.starts_with("tollgate.yaml:2:9: listen:"), "{out}");
}

#[test]
fn a_set_env_var_satisfies_the_check() {
    let yaml = "providers:\n  openai:\n    kind: openai\n    api_key_env: TOLLGATE_TEST_SET_VAR\n";
    let (ok, out) = check(yaml, &[("TOLLGATE_TEST_SET_VAR", "sk-x")]);
    assert!(ok, "{out}");
    assert!(!out.contains("sk-x"));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tollgate.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(&path)
        .envs([
            ("OPENAI_API_KEY", "sk-x"),
            ("ANTHROPIC_API_KEY", "sk-ant-x"),
            ("TOLLGATE_KEY_SEARCH_PROD", "tg-1"),
            ("TOLLGATE_KEY_SUPPORT_PROD", "tg-2"),
            ("CLICKHOUSE_PASSWORD", "pw"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the keys' variables, each one is reported.
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 5, "{err}");
}
