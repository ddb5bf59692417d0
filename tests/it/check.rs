//! `tollgate check`: every problem reported as FILE:LINE:COL, non-zero exit.

use std::process::Command;

fn check(yaml: &str, env: &[(&str, &str)]) -> (bool, String) {
    check_with(yaml, &[], env)
}

/// Runs `tollgate check` on `yaml` with `files` (paths relative to the config, directories
/// made as needed) beside it; paths in the output are shown relative to the config.
pub(crate) fn check_with(
    yaml: &str,
    files: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    for (name, text) in files {
        let file = dir.path().join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
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
        text.replace(&format!("{}/", dir.path().display()), ""),
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
            ("OPENROUTER_API_KEY", "sk-or-x"),
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
    // Every example rule of policies/ is loaded with it.
    let examples = std::fs::read_dir(path.parent().unwrap().join("../policies"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .map(|text| text.matches("\n  - name: ").count())
        .sum::<usize>();
    assert!(examples >= 5, "the examples hold {examples} rules");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("policies: {examples} rules from ")),
        "{stdout}"
    );
    // Without the providers' and keys' variables, each one is reported, and nothing about
    // the rules naming those providers.
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 6, "{err}");
    assert!(!err.contains("policies"), "{err}");
}

const SIM_CONFIG: &str = "\
providers:
  sim:
    kind: simulated
models:
  gpt-4o-mini: { provider: sim }
  gpt-4o: { provider: sim }
policies: policies
";

#[test]
fn policies_are_loaded_and_counted() {
    let cheap_first = "\
rules:
  - name: cheap-first
    match: { model: tollgate/cheap-first, endpoint: /v1/chat/completions }
    cascade:
      steps: [{ model: gpt-4o-mini }, { model: gpt-4o }]
      judges: { finish: true }
";
    let caps = "rules:\n  - name: cap\n    priority: -1\n    rewrite: { max_tokens: 100 }\n";
    let (ok, out) = check_with(
        SIM_CONFIG,
        &[
            ("policies/a.yaml", cheap_first),
            ("policies/b.yml", caps),
            ("policies/README.md", "not a policy"),
        ],
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("\npolicies: 2 rules from policies/\n"),
        "{out}"
    );
}

#[test]
fn policy_problems_are_located_and_reported_with_the_configs() {
    let yaml = format!("{SIM_CONFIG}keys:\n  - name: k\n    sha256: not-hex\n");
    let bad = "\
rules:
  - name: route
    match: { endpoint: /v1/chat/completions }
    route:
      targets:
        - { provider: azure, model: gpt-4o }
        - { model: gpt-4o, weight: 0 }
";
    let shadowed = "\
rules:
  - name: later
    priority: -5
    match: { endpoint: /v1/chat/completions, team: search }
";
    let (ok, out) = check_with(
        &yaml,
        &[("policies/a.yaml", bad), ("policies/b.yaml", shadowed)],
        &[],
    );
    assert!(!ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "tollgate.yaml:10:13: key \"k\": sha256 must be 64 hex digits",
            "policies/a.yaml:6:23: rule \"route\": provider \"azure\" is not defined in tollgate.yaml (defined: sim)",
            "policies/a.yaml:7:36: rule \"route\": weight must be at least 1",
        ],
        "{out}"
    );

    // Fixed, the shadowed rule is reported in turn.
    let fixed = bad
        .replace("azure", "sim")
        .replace("weight: 0", "weight: 2");
    let (ok, out) = check_with(
        SIM_CONFIG,
        &[("policies/a.yaml", &fixed), ("policies/b.yaml", shadowed)],
        &[],
    );
    assert!(!ok);
    assert_eq!(
        out.trim_end(),
        "policies/b.yaml:2:5: rule \"later\" can never match: rule \"route\" (policies/a.yaml:2) matches every request it does"
    );
}

#[test]
fn a_missing_policy_directory_is_located() {
    let (ok, out) = check_with(SIM_CONFIG, &[], &[]);
    assert!(!ok);
    assert_eq!(
        out.trim_end(),
        "tollgate.yaml:7:11: policies: policies is not a directory"
    );
}

#[test]
fn spend_control_problems_are_located() {
    let yaml = r#"providers:
  sim:
    kind: simulated
time_zone: Mars/Olympus
budgets:
  - name: b
    period: fortnight
    amount_usd: 0
  - name: b
    period: month
    amount_usd: 5
    action: downgrade
    downgrade_to: no-such-rule
  - name: c
    period: day
    amount_usd: 1
    alert_at: [0, 50]
rate_limits:
  - name: r
    per: org
    rpm: 10
  - name: s
    per: key
alerts:
  webhooks:
    - name: w
      format: json
      url: ftp://example.com/hook
    - name: x
      format: json
      url: https://example.com/hook
replicas:
  budgets: clickhouse
  rate_limits: redis
"#;
    let (ok, out) = check(yaml, &[]);
    assert!(!ok);
    for expected in [
        "tollgate.yaml:4:12: time_zone: \"Mars/Olympus\" is not an IANA time zone name",
        "tollgate.yaml:7:13: budget \"b\": period \"fortnight\" is not day, week or month",
        "tollgate.yaml:8:17: budget \"b\": amount_usd must be above 0",
        "tollgate.yaml:9:11: budget \"b\" is defined twice",
        "budget \"b\": downgrade_to names rule \"no-such-rule\", which no policy file defines",
        "tollgate.yaml:17:16: budget \"c\": alert_at 0 is not a percentage from 1 to 1000",
        "tollgate.yaml:20:10: rate limit \"r\": per \"org\" is not key, team or user",
        "rate limit \"s\": set rpm, tpm or both",
        "webhook \"w\": not an http(s) URL (scheme \"ftp\")",
        "webhook \"x\": format json needs secret_env",
        "replicas.budgets: clickhouse needs telemetry.clickhouse",
        "replicas: redis sharing needs replicas.redis",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // The webhook URL is never printed: it may carry a token.
    assert!(!out.contains("example.com"), "{out}");
}
