//! The `cache` section of `tollgate.yaml` and the `cache` of policy rules, loaded from real
//! files as `tollgate check` loads them.

use crate::cache::CacheScope;
use crate::config::{self, Validated};
use std::time::Duration;

const PROVIDERS: &str = "\
providers:
  openai: { kind: openai_compatible, base_url: 'http://127.0.0.1:9' }
models:
  gpt-4o-mini: { provider: openai }
";

/// Loads `PROVIDERS` plus `extra`, with `policy` as the one policy file when given.
fn load(extra: &str, policy: Option<&str>) -> Result<Validated, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = format!("{PROVIDERS}{extra}");
    if let Some(policy) = policy {
        yaml.push_str("policies: policies\n");
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/p.yaml"), policy).unwrap();
    }
    std::fs::write(dir.path().join("tollgate.yaml"), yaml).unwrap();
    let prefix = format!("{}/", dir.path().display());
    config::load(&dir.path().join("tollgate.yaml")).map_err(|e| {
        e.0.iter()
            .map(|p| p.to_string().replace(&prefix, ""))
            .collect()
    })
}

fn problems(extra: &str, policy: Option<&str>) -> Vec<String> {
    match load(extra, policy) {
        Ok(_) => panic!("accepted"),
        Err(p) => p,
    }
}

#[test]
fn the_cache_is_off_unless_enabled() {
    assert!(load("", None).unwrap().cache.is_none());
    assert!(
        load("cache: { max_bytes: 1000 }\n", None)
            .unwrap()
            .cache
            .is_none()
    );
}

#[test]
fn defaults_and_settings() {
    let c = load("cache: { enabled: true }\n", None)
        .unwrap()
        .cache
        .unwrap();
    assert_eq!(
        (c.max_bytes, c.max_entries, c.max_entry_bytes, c.ttl),
        (256 << 20, 100_000, 4 << 20, Duration::from_secs(3600))
    );
    assert!(c.redis.is_none());
    let c = load(
        "cache:\n  enabled: true\n  max_bytes: 10000000\n  ttl_secs: 5\n  redis: { url: 'redis://127.0.0.1:6379/2', key_prefix: 'tg:' }\n",
        None,
    )
    .unwrap()
    .cache
    .unwrap();
    let r = c.redis.unwrap();
    assert_eq!(
        (r.url.as_str(), r.key_prefix.as_str()),
        ("redis://127.0.0.1:6379/2", "tg:")
    );
    assert_eq!(c.ttl, Duration::from_secs(5));
    assert!(
        !format!("{r:?}").contains("6379"),
        "the URL is never printed"
    );
}

#[test]
fn bad_settings_are_located() {
    let p = problems(
        "cache:\n  enabled: true\n  max_bytes: 100\n  ttl_secs: 0\n",
        None,
    );
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].starts_with("tollgate.yaml:6:3: cache.ttl_secs must be above 0"),
        "{p:#?}"
    );
    assert!(p[1].contains("max_entry_bytes (4194304) is above cache.max_bytes (100)"));
    let p = problems(
        "cache:\n  enabled: true\n  redis: { url: 'rediss://h:1' }\n",
        None,
    );
    assert!(p[0].contains("TLS (rediss://) is not supported"), "{p:#?}");
    let p = problems(
        "cache:\n  enabled: true\n  redis: { key_prefix: x }\n",
        None,
    );
    assert!(
        p[0].contains("set exactly one of url and url_env"),
        "{p:#?}"
    );
    let p = problems(
        "cache:\n  enabled: true\n  redis: { url_env: TOLLGATE_TEST_UNSET_REDIS_URL }\n",
        None,
    );
    assert!(p[0].contains("environment variable TOLLGATE_TEST_UNSET_REDIS_URL is not set"));
}

#[test]
fn rules_carry_their_cache_settings() {
    let policy = "\
rules:
  - name: shared
    match: { team: eval }
    cache: { scope: global, ttl_secs: 60, nondeterministic: true }
  - name: private
    match: { team: ci }
    cache: {}
  - name: plain
    match: { team: web }
";
    let v = load("cache: { enabled: true }\n", Some(policy)).unwrap();
    let rule = |n: &str| v.policies.rules().find(|r| r.name == n).unwrap().clone();
    let shared = rule("shared").cache.unwrap();
    assert_eq!(shared.scope, CacheScope::Global);
    assert_eq!(shared.ttl, Some(Duration::from_secs(60)));
    assert!(shared.nondeterministic);
    let private = rule("private").cache.unwrap();
    assert_eq!(
        (private.scope, private.ttl, private.nondeterministic),
        (CacheScope::Key, None, false)
    );
    assert!(rule("plain").cache.is_none());
}

#[test]
fn bad_rule_cache_settings_are_located() {
    let policy = "\
rules:
  - name: a
    match: { team: ops }
    cache: { scope: everyone, ttl_secs: 0 }
  - name: b
    match: { team: dev }
    deny: not here
    cache: {}
";
    let p = problems("cache: { enabled: true }\n", Some(policy));
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p[0].starts_with("policies/p.yaml:4:21: rule \"a\": unknown cache scope \"everyone\""),
        "{p:#?}"
    );
    assert!(
        p[1].starts_with("policies/p.yaml:4:41: rule \"a\": cache ttl_secs must be above 0"),
        "{p:#?}"
    );
    assert!(
        p[2].contains("rule \"b\": a deny rule gets no answer, so it caches nothing"),
        "{p:#?}"
    );
}

#[test]
fn a_rule_that_caches_needs_the_cache_on() {
    let policy = "rules:\n  - name: evals\n    match: { team: eval }\n    cache: { scope: team }\n";
    let p = problems("", Some(policy));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with(
            "policies/p.yaml:2:5: rule \"evals\" caches answers, but the cache is off"
        ),
        "{p:#?}"
    );
    assert!(load("cache: { enabled: true }\n", Some(policy)).is_ok());
}
