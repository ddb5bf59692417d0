//! Policy files: parsing and checking, each problem at its position. Each case loads a real
//! `tollgate.yaml` naming a policy directory, as `tollgate check` does.

use crate::attribution::Attribution;
use crate::config::{self, Validated};
use crate::policy::judge::DEFAULT_REFUSALS;
use crate::policy::{Action, Facts, Retries, Target};
use std::time::Duration;

/// Providers of each kind, models routed through the table (one renamed upstream), the
/// built-in prices.
const CONFIG: &str = "\
providers:
  openai: { kind: openai_compatible, base_url: 'http://127.0.0.1:9' }
  anthropic: { kind: anthropic, base_url: 'http://127.0.0.1:9' }
  sim: { kind: simulated }
models:
  gpt-4o-mini: { provider: openai }
  gpt-4o: { provider: openai }
  fast: { provider: openai, upstream_model: gpt-4o-mini }
  \"claude-*\": { provider: anthropic }
policies: policies
";

/// Loads `CONFIG` with `files` in its policy directory. Problems come back as printed by
/// `tollgate check`, with paths relative to the config's directory.
fn load(files: &[(&str, &str)]) -> Result<Validated, Vec<String>> {
    load_with(CONFIG, files)
}

fn load_with(config: &str, files: &[(&str, &str)]) -> Result<Validated, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tollgate.yaml"), config).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("policies").join(name), text).unwrap();
    }
    let prefix = format!("{}/", dir.path().display());
    config::load(&dir.path().join("tollgate.yaml")).map_err(|e| {
        e.0.iter()
            .map(|p| p.to_string().replace(&prefix, ""))
            .collect()
    })
}

/// The problems of a policy set that must fail.
fn problems(files: &[(&str, &str)]) -> Vec<String> {
    match load(files) {
        Ok(_) => panic!("the policies were accepted"),
        Err(p) => p,
    }
}

/// The one problem of a policy set that must fail.
fn problem(files: &[(&str, &str)]) -> String {
    let p = problems(files);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

/// A request for `model` on `endpoint` from `env`, nothing else set.
fn facts<'a>(attribution: &'a Attribution, endpoint: &'a str, model: &'a str) -> Facts<'a> {
    let format = crate::api::Endpoint::from_path(endpoint)
        .map_or(crate::api::ApiFormat::OpenAi, |e| {
            e.format(&http::HeaderMap::new())
        });
    Facts {
        format,
        attribution,
        endpoint,
        model,
        stream: false,
        tools: false,
        json: false,
        input_tokens: &|| 100,
    }
}

const CHEAP_FIRST: &str = r#"
rules:
  - name: cheap-first-chat
    priority: 100
    match:
      model: tollgate/cheap-first
      endpoint: /v1/chat/completions
    cascade:
      steps:
        - { provider: sim, model: gpt-4o-mini }
        - { provider: sim, model: gpt-4o }
      judges:
        finish: true
        refusal: true
        length: { min_chars: 1 }
        llm: { model: gpt-4o-mini, prompt: "Grade it." }
      deadline_ms: 60000
"#;

const OTHERS: &str = r#"
rules:
  - name: dev-allow-list
    priority: 50
    match:
      env: dev
      endpoint: [/v1/chat/completions, /v1/responses]
      not: { model: [gpt-4o-mini, "claude-haiku*"] }
    rewrite: { model: gpt-4o-mini, max_tokens: 512 }
  - name: failover
    priority: 50
    match: { team: [search, support], endpoint: /v1/chat/completions, model: "gpt-4o*" }
    route:
      targets:
        - { provider: openai, model: gpt-4o, timeout_ms: 20000, weight: 3 }
        - { model: fast }
      retries: { per_target: 1, backoff_ms: 100 }
  - name: no-embeddings-in-prod
    match: { env: prod, endpoint: /v1/embeddings }
    deny: Embeddings are not available in prod
  - name: fallback
    default: true
    rewrite: { max_tokens: 4096 }
"#;

#[test]
fn a_full_set_loads_in_the_order_rules_are_tried() {
    // Files are read in name order: b.yaml's rules tie with each other and keep file order.
    let cfg = load(&[
        ("b.yaml", OTHERS),
        ("a.yml", CHEAP_FIRST),
        ("notes.txt", "x"),
    ])
    .unwrap();
    let set = &cfg.policies;
    let names: Vec<&str> = set.rules().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cheap-first-chat",
            "dev-allow-list",
            "failover",
            "no-embeddings-in-prod",
            "fallback"
        ]
    );
    assert_eq!(set.len(), 5);

    let rule = |name: &str| set.rules().find(|r| r.name == name).unwrap();
    let first = rule("cheap-first-chat");
    assert_eq!(first.source.file.file_name().unwrap(), "a.yml");
    assert_eq!((first.source.line, first.source.column), (3, 5));
    let Action::Cascade(c) = &first.action else {
        panic!("{:?}", first.action)
    };
    let steps: Vec<String> = c.steps.iter().map(Target::label).collect();
    assert_eq!(steps, ["sim/gpt-4o-mini", "sim/gpt-4o"]);
    assert!(c.judges.finish && !c.judges.json);
    assert_eq!(
        c.judges.refusal.as_ref().unwrap().len(),
        DEFAULT_REFUSALS.len()
    );
    assert_eq!((c.judges.min_chars, c.judges.max_chars), (Some(1), None));
    let llm = c.judges.llm.as_ref().unwrap();
    assert_eq!(
        llm.target.label(),
        "openai/gpt-4o-mini",
        "from the models table"
    );
    assert!(llm.accept.is_match("PASS: fine") && !llm.accept.is_match("fail"));
    // Two steps and one judging call.
    assert_eq!(c.max_attempts, 3);
    assert_eq!(c.deadline, Some(Duration::from_secs(60)));

    let Action::Route(r) = &rule("failover").action else {
        panic!()
    };
    let targets: Vec<(String, u32, Option<Duration>)> = r
        .targets
        .iter()
        .map(|t| (t.label(), t.weight, t.timeout))
        .collect();
    assert_eq!(
        targets,
        [
            ("openai/gpt-4o".into(), 3, Some(Duration::from_secs(20))),
            // `fast` is renamed upstream by the models table.
            ("openai/gpt-4o-mini".into(), 1, None),
        ]
    );
    assert_eq!(r.retries.per_target, 1);
    assert_eq!(r.retries.backoff, Duration::from_millis(100));
    assert_eq!(r.retries.max_attempts, Retries::default().max_attempts);

    let dev = rule("dev-allow-list");
    assert!(matches!(dev.action, Action::Pass));
    assert_eq!(dev.rewrite.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(dev.rewrite.max_tokens, Some(512));
    let Action::Deny(reason) = &rule("no-embeddings-in-prod").action else {
        panic!()
    };
    assert_eq!(reason, "Embeddings are not available in prod");

    // The conditions as written decide which rule a request gets.
    let who = |team: &str, env: &str| Attribution {
        team: team.into(),
        env: env.into(),
        ..Attribution::default()
    };
    let chat = "/v1/chat/completions";
    let pick = |a: &Attribution, endpoint: &str, model: &str| {
        set.find(&facts(a, endpoint, model)).map(|r| r.name.clone())
    };
    let dev_growth = who("growth", "dev");
    assert_eq!(
        pick(&dev_growth, chat, "tollgate/cheap-first").unwrap(),
        "cheap-first-chat"
    );
    assert_eq!(pick(&dev_growth, chat, "gpt-4o").unwrap(), "dev-allow-list");
    assert_eq!(
        pick(&dev_growth, chat, "claude-haiku-4-5").unwrap(),
        "fallback",
        "allowed in dev"
    );
    assert_eq!(
        pick(&who("search", "prod"), chat, "gpt-4o-2024-08-06").unwrap(),
        "failover"
    );
    assert_eq!(
        pick(&who("search", "prod"), "/v1/embeddings", "x").unwrap(),
        "no-embeddings-in-prod"
    );
    assert_eq!(
        pick(&who("ads", "prod"), chat, "gpt-4o").unwrap(),
        "fallback"
    );
}

#[test]
fn no_policies_configured_is_an_empty_set() {
    let cfg = load_with(&CONFIG.replace("policies: policies\n", ""), &[]).unwrap();
    assert!(cfg.policies.is_empty());
}

#[test]
fn a_missing_directory_is_located_at_the_policies_field() {
    let p = load_with(
        &CONFIG.replace("policies: policies", "policies: nowhere"),
        &[],
    )
    .unwrap_err();
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("tollgate.yaml:10:11: policies: "),
        "{p:#?}"
    );
    assert!(p[0].ends_with("nowhere is not a directory"), "{p:#?}");
}

#[test]
fn syntax_and_unknown_fields_are_located() {
    let p = problem(&[("a.yaml", "rules:\n  - name: x\n    colour: red\n")]);
    assert!(
        p.starts_with("policies/a.yaml:3:5: unknown field `colour`"),
        "{p}"
    );
    let p = problem(&[("a.yaml", "rules:\n  - name: x\n    match: { team: 7 }\n")]);
    assert!(p.starts_with("policies/a.yaml:3:14: invalid type: integer `7`, expected a string or a list of strings (quote names such as \"no\" or \"1\")"), "{p}");
    let p = problem(&[("a.yaml", "rules:\n  - name: x\n    match:\n      env: no\n")]);
    assert!(p.starts_with("policies/a.yaml:4:7: invalid type: boolean `false`, expected a string or a list of strings (quote names such as \"no\" or \"1\")"), "{p}");
    let p = problem(&[(
        "a.yaml",
        "rules:\n  - name: x\n    match: { stream: sometimes }\n",
    )]);
    assert!(p.starts_with("policies/a.yaml:3:22: "), "{p}");
}

#[test]
fn every_problem_of_every_file_is_reported_in_reading_order() {
    let p = problems(&[
        (
            "a.yaml",
            "rules:\n  - name: x\n    deny: no\n    rewrite: { max_tokens: 0 }\n",
        ),
        (
            "b.yaml",
            "rules:\n  - name: x\n    match: { endpoint: /v1/nope }\n",
        ),
        ("c.yaml", "rules: [\n"),
    ]);
    assert_eq!(p.len(), 5, "{p:#?}");
    assert_eq!(
        p[0],
        "policies/a.yaml:4:14: rule \"x\": a deny rule sends nothing upstream, so it rewrites nothing"
    );
    assert_eq!(
        p[1],
        "policies/a.yaml:4:28: rule \"x\": max_tokens must be above 0"
    );
    assert_eq!(
        p[2],
        "policies/b.yaml:2:11: rule name \"x\" is already used at policies/a.yaml:2"
    );
    assert!(p[3].starts_with("policies/b.yaml:3:24: rule \"x\": unknown endpoint \"/v1/nope\" (known: /v1/chat/completions, "), "{p:#?}");
    assert!(p[4].starts_with("policies/c.yaml:"), "{p:#?}");
}

/// One rule of its own file, the lines after `- name: r`.
fn rule(body: &str) -> String {
    problem(&[("r.yaml", &format!("rules:\n  - name: r\n{body}"))])
}

#[test]
fn defaults_are_single_and_unconditional() {
    let p = problem(&[(
        "d.yaml",
        "rules:\n  - name: a\n    default: true\n  - name: b\n    default: true\n",
    )]);
    assert_eq!(
        p,
        "policies/d.yaml:5:14: rule \"b\": only one rule may be the default; rule \"a\" (policies/d.yaml:2) is"
    );
    let p = rule("    default: true\n    match: { env: dev }\n");
    assert_eq!(
        p,
        "policies/r.yaml:4:12: rule \"r\": the default rule has no `match`: it applies when no other rule does"
    );
}

/// Each check, with the exact position and message `tollgate check` prints. Each body
/// follows `rules:` and `- name: r`, so its first line is line 3.
#[test]
fn each_check_names_the_position_it_refers_to() {
    let chat = "    match:\n      endpoint: /v1/chat/completions\n";
    let cases: &[(String, &str)] = &[
        (
            format!("{chat}    route:\n      targets: [{{ model: gpt-4o }}]\n    deny: no\n"),
            "7:11: rule \"r\": set one of route, cascade and deny, not several",
        ),
        (
            format!(
                "{chat}    route:\n      targets:\n        - {{ provider: azure, model: gpt-4o }}\n"
            ),
            "7:23: rule \"r\": provider \"azure\" is not defined in tollgate.yaml (defined: anthropic, openai, sim)",
        ),
        (
            format!("{chat}    route:\n      targets:\n        - model: llama-3\n"),
            "7:18: rule \"r\": model \"llama-3\" names no provider and is not in the `models` table of tollgate.yaml",
        ),
        (
            format!("{chat}    route:\n      targets: []\n"),
            "6:7: rule \"r\": a route needs at least one target",
        ),
        (
            format!("{chat}    route:\n      targets:\n        - {{ model: gpt-4o, weight: 0 }}\n"),
            "7:36: rule \"r\": weight must be at least 1",
        ),
        (
            format!(
                "{chat}    route:\n      targets:\n        - {{ model: gpt-4o, timeout_ms: 0 }}\n"
            ),
            "7:40: rule \"r\": timeout_ms must be above 0",
        ),
        (
            format!(
                "{chat}    route:\n      targets: [{{ model: gpt-4o }}]\n      retries: {{ max_attempts: 0 }}\n"
            ),
            "7:32: rule \"r\": max_attempts must be above 0",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps:\n        - {{ model: gpt-4o-mini }}\n      judges: {{ finish: true }}\n"
            ),
            "6:7: rule \"r\": a cascade needs at least 2 steps (it has 1); use route for one",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini }}, {{ model: gpt-4o }}]\n      judges: {{ finish: false, refusal: false }}\n"
            ),
            "7:15: rule \"r\": a cascade needs at least one judge",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini, weight: 2 }}, {{ model: gpt-4o }}]\n      judges: {{ json: true }}\n"
            ),
            "6:45: rule \"r\": weight applies to route targets only",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini }}, {{ model: gpt-4o }}]\n      judges:\n        refusal: []\n"
            ),
            "8:18: rule \"r\": `refusal: []` judges nothing; use true for the built-in patterns",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini }}, {{ model: gpt-4o }}]\n      judges:\n        refusal: [\"sorry\", \"(can't\"]\n"
            ),
            "8:28: rule \"r\": refusal pattern \"(can't\" is not a valid regex: unclosed group",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini }}, {{ model: gpt-4o }}]\n      judges:\n        llm: {{ model: gpt-4o, prompt: Grade., accept: \"[\" }}\n"
            ),
            "8:55: rule \"r\": accept pattern \"[\" is not a valid regex: unclosed character class",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini }}, {{ model: gpt-4o }}]\n      judges:\n        llm: {{ model: gpt-4o, prompt: \"\" }}\n"
            ),
            "8:39: rule \"r\": the llm judge needs a prompt",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini }}, {{ model: gpt-4o }}]\n      judges:\n        length: {{ min_chars: 10, max_chars: 5 }}\n"
            ),
            "8:17: rule \"r\": length min_chars 10 is above max_chars 5",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini }}, {{ model: gpt-4o }}]\n      judges:\n        logprob: {{ min_mean: 0.5 }}\n"
            ),
            "8:30: rule \"r\": logprob min_mean must be a number at most 0 (logprobs are never positive), not 0.5",
        ),
        (
            format!(
                "{chat}    cascade:\n      steps: [{{ model: gpt-4o-mini }}, {{ model: gpt-4o }}]\n      judges: {{ finish: true }}\n      deadline_ms: 0\n"
            ),
            "8:20: rule \"r\": deadline_ms must be above 0",
        ),
        (
            "    match:\n      model: [gpt-4o, \"gpt-[4\"]\n".into(),
            "4:23: rule \"r\": model pattern \"gpt-[4\" is not a valid glob: error parsing glob 'gpt-[4': unclosed character class; missing ']'",
        ),
        (
            "    match:\n      team: []\n".into(),
            "4:13: rule \"r\": `team: []` matches no request; omit it to match any",
        ),
        (
            "    match:\n      endpoint: /v1/chat/completions/\n".into(),
            "4:17: rule \"r\": unknown endpoint \"/v1/chat/completions/\" (known: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages, /v1/messages/count_tokens)",
        ),
        (
            "    match:\n      input_tokens: { min: 9000, max: 8000 }\n".into(),
            "4:21: rule \"r\": input_tokens min 9000 is above max 8000",
        ),
        (
            "    match:\n      not: { endpoint: /v1/models }\n".into(),
            "4:24: rule \"r\": unknown endpoint \"/v1/models\" (known: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages, /v1/messages/count_tokens)",
        ),
        (
            "    rewrite:\n      max_tokens: 0\n".into(),
            "4:19: rule \"r\": max_tokens must be above 0",
        ),
        (
            "    rewrite:\n      model: llama-3\n".into(),
            "4:14: rule \"r\": rewrite model \"llama-3\" is not in the `models` table of tollgate.yaml",
        ),
        (
            "    deny: \"  \"\n".into(),
            "3:11: rule \"r\": deny needs the reason shown to the client",
        ),
        (
            "    deny: No.\n    rewrite: { max_tokens: 10 }\n".into(),
            "4:14: rule \"r\": a deny rule sends nothing upstream, so it rewrites nothing",
        ),
        (
            "    name: again\n".into(),
            "3:5: duplicate mapping key: name",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(body, want)| {
            let got = rule(body);
            let want = format!("policies/r.yaml:{want}");
            (!got.starts_with(&want)).then(|| format!("{body}got  {got}\nwant {want}\n"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_target_step_and_judge_is_priced() {
    let p = problems(&[(
        "r.yaml",
        r#"rules:
  - name: r
    match: { endpoint: /v1/chat/completions }
    cascade:
      steps:
        - { provider: sim, model: gpt-4o-mini }
        - { provider: sim, model: my-finetune }
      judges: { llm: { provider: sim, model: grader, prompt: ok } }
"#,
    )]);
    assert_eq!(
        p,
        [
            "policies/r.yaml:7:35: rule \"r\": target sim/my-finetune has no price; add it to a price file (a plan's cost, savings and budgets need every target's price)",
            "policies/r.yaml:8:46: rule \"r\": target sim/grader has no price; add it to a price file (a plan's cost, savings and budgets need every target's price)",
        ]
    );
}

#[test]
fn targets_speak_the_format_of_the_rules_endpoints() {
    let p = rule(
        "    match: { endpoint: [/v1/messages] }\n    route:\n      targets:\n        - { provider: anthropic, model: claude-haiku-4-5 }\n        - { provider: openai, model: gpt-4o-mini }\n",
    );
    assert_eq!(
        p,
        "policies/r.yaml:7:11: rule \"r\": target openai/gpt-4o-mini does not speak the Anthropic API of /v1/messages"
    );
    // Without `match.endpoint` a rule takes the requests its targets speak; targets that
    // share no format could never all be used.
    load(&[(
        "r.yaml",
        "rules:\n  - name: r\n    route:\n      targets: [{ model: claude-haiku-4-5 }]\n",
    )])
    .unwrap();
    let p = rule(
        "    route:\n      targets:\n        - { provider: anthropic, model: claude-haiku-4-5 }\n        - { provider: openai, model: gpt-4o-mini }\n",
    );
    assert!(
        p.starts_with("policies/r.yaml:4:7: rule \"r\": its targets speak no API format in common"),
        "{p}"
    );
    // The simulated provider speaks both.
    load(&[("r.yaml", "rules:\n  - name: r\n    route:\n      targets: [{ provider: sim, model: claude-haiku-4-5 }]\n")]).unwrap();
}

#[test]
fn a_rule_behind_a_broader_one_can_never_match() {
    let p = problem(&[
        (
            "a.yaml",
            "rules:\n  - name: all-dev\n    priority: 10\n    match: { env: [dev, staging] }\n    deny: No.\n",
        ),
        (
            "b.yaml",
            "rules:\n  - name: dev-search\n    priority: 10\n    match: { env: dev, team: search, model: gpt-4o }\n    rewrite: { max_tokens: 10 }\n",
        ),
    ]);
    assert_eq!(
        p,
        "policies/b.yaml:2:5: rule \"dev-search\" can never match: rule \"all-dev\" (policies/a.yaml:2) matches every request it does"
    );

    // Model globs: a `prefix*` covers the names and narrower globs under it.
    let p = problem(&[(
        "a.yaml",
        "rules:\n  - name: gpt\n    match: { model: \"gpt-*\" }\n  - name: gpt-4o\n    match: { model: [\"gpt-4o*\", gpt-5], stream: true, not: { team: x } }\n",
    )]);
    assert!(
        p.starts_with("policies/a.yaml:4:5: rule \"gpt-4o\" can never match: rule \"gpt\""),
        "{p}"
    );

    // A rule with no conditions leaves nothing for the default.
    let p = problem(&[(
        "a.yaml",
        "rules:\n  - name: fallback\n    default: true\n  - name: all\n",
    )]);
    assert!(p.starts_with("policies/a.yaml:2:5: rule \"fallback\" can never match: rule \"all\" (policies/a.yaml:4)"), "{p}");
}

#[test]
fn narrower_or_earlier_rules_are_not_shadowed() {
    let ok = |yaml: &str| {
        load(&[("a.yaml", yaml)]).unwrap_or_else(|p| panic!("{yaml}\n{p:#?}"));
    };
    // The broader rule comes later (higher priority first).
    ok(
        "rules:\n  - name: wide\n    match: { env: dev }\n  - name: narrow\n    priority: 1\n    match: { env: dev, team: a }\n",
    );
    // The earlier rule has a `not`, a narrower token range, a condition the later lacks.
    ok(
        "rules:\n  - name: a\n    match: { env: dev, not: { team: x } }\n  - name: b\n    match: { env: dev, team: z }\n",
    );
    ok(
        "rules:\n  - name: a\n    match: { input_tokens: { max: 1000 } }\n  - name: b\n    match: { input_tokens: { max: 2000 } }\n",
    );
    ok(
        "rules:\n  - name: a\n    match: { tags: { tier: free } }\n  - name: b\n    match: { team: x }\n",
    );
    ok(
        "rules:\n  - name: a\n    match: { model: [\"gpt-4*\"] }\n  - name: b\n    match: { model: [gpt-4o, o3] }\n",
    );
    ok(
        "rules:\n  - name: a\n    match: { model: [\"gpt-4?\"] }\n  - name: b\n    match: { model: [\"gpt-4o*\"] }\n",
    );
    ok(
        "rules:\n  - name: a\n    match: { stream: true }\n  - name: b\n    match: { json: true }\n",
    );
}
