use super::*;
use chrono::TimeZone;

const SAMPLE: &str = "\
# Prices in USD per 1M tokens.
version: 1
models:
  gpt-4o:
    provider: openai
    aliases: [gpt4o]
    prices:
      - effective_from: 2024-08-06
        input: \"2.50\"
        output: 10.00
        cached_input: 1.25
      - effective_from: 2024-05-13
        input: 5
        output: 15
  gpt-4o-2024-05-13:
    provider: openai
    prices:
      - effective_from: 2024-05-13
        input: 5
        output: 15
  claude-3-5-sonnet:
    provider: anthropic
    prices:
      - effective_from: 2024-06-20
        input: 3
        output: 15
        cached_input: 0.30
        cache_write: 3.75
";

fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap()
}

fn usd(text: &str) -> NanoUsd {
    NanoUsd::parse_usd(text).unwrap()
}

fn sample() -> PriceBook {
    PriceBook::parse(SAMPLE, "sample.yaml").unwrap()
}

/// Parses `text` and renders its errors, which it must have.
fn parse_errors(text: &str, source: &str) -> Vec<String> {
    let errors = PriceBook::parse(text, source).expect_err("should not parse");
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn resolves_exact_alias_prefix_and_snapshot_names() {
    let book = sample();
    assert_eq!(book.len(), 3);
    let cases = [
        ("gpt-4o", "gpt-4o"),
        ("gpt4o", "gpt-4o"),
        ("openai/gpt-4o", "gpt-4o"),
        ("openrouter/openai/gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("openai/gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-latest", "gpt-4o"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        // An exact entry beats the snapshot rule.
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
    ];
    for (model, canonical) in cases {
        assert_eq!(book.resolve_name(model), Some(canonical), "{model}");
    }
    for unknown in [
        "gpt-4o-mini",
        "gpt-5",
        "",
        "-latest",
        "openai/",
        "gpt-4o-2024-08",
    ] {
        assert_eq!(book.resolve_name(unknown), None, "{unknown:?}");
    }
}

#[test]
fn exact_snapshot_entry_keeps_its_own_price() {
    let book = sample();
    let later = at(2025, 1, 1, 0, 0, 0);
    assert_eq!(
        book.lookup("gpt-4o-2024-05-13", later).unwrap().input,
        usd("5")
    );
    assert_eq!(
        book.lookup("gpt-4o-2024-11-20", later).unwrap().input,
        usd("2.5")
    );
}

#[test]
fn price_in_force_changes_at_effective_from() {
    let book = sample();
    let before = book.lookup("gpt-4o", at(2024, 8, 5, 23, 59, 59)).unwrap();
    assert_eq!((before.input, before.output), (usd("5"), usd("15")));
    assert_eq!(
        before.effective_from,
        NaiveDate::from_ymd_opt(2024, 5, 13).unwrap()
    );

    let after = book.lookup("gpt-4o", at(2024, 8, 6, 0, 0, 0)).unwrap();
    assert_eq!((after.input, after.output), (usd("2.5"), usd("10")));
    assert_eq!(after.cached_input, usd("1.25"));
    // Absent rates default: cache writes at the input rate, reasoning at the output rate.
    assert_eq!(after.cache_write, usd("2.5"));
    assert_eq!(after.reasoning, usd("10"));
}

#[test]
fn unknown_model_or_time_before_first_price_is_none() {
    let book = sample();
    assert!(
        book.lookup("no-such-model", at(2025, 1, 1, 0, 0, 0))
            .is_none()
    );
    assert!(book.lookup("gpt-4o", at(2024, 5, 12, 23, 59, 59)).is_none());
    assert!(book.lookup("gpt-4o", at(2024, 5, 13, 0, 0, 0)).is_some());
    assert!(
        PriceBook::default()
            .lookup("gpt-4o", at(2025, 1, 1, 0, 0, 0))
            .is_none()
    );
}

#[test]
fn cost_charges_every_token_once_at_its_own_rate() {
    let price = Price {
        effective_from: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
        input: usd("3"),
        output: usd("15"),
        cached_input: usd("0.30"),
        cache_write: usd("3.75"),
        reasoning: usd("20"),
    };
    // Anthropic-style: 1000 prompt tokens of which 800 read from and 100 written to the
    // cache; 500 output tokens of which 200 reasoning.
    let usage = Usage {
        input_tokens: 1000,
        output_tokens: 500,
        cached_input_tokens: 800,
        cache_write_tokens: 100,
        reasoning_tokens: 200,
    };
    // 100 × $3 + 800 × $0.30 + 100 × $3.75 + 300 × $15 + 200 × $20, per 1M tokens:
    // 300_000 + 240_000 + 375_000 + 4_500_000 + 4_000_000 nano-USD.
    assert_eq!(price.cost(&usage), NanoUsd(9_415_000));
    assert_eq!(price.cost(&Usage::default()), NanoUsd::ZERO);
}

#[test]
fn unknown_field_names_file_line_and_column() {
    let text = "\
version: 1
models:
  m:
    prices:
      - effective_from: 2024-01-01
        input: 1
        output: 2
        cachd_input: 0.5
";
    let errors = parse_errors(text, "prices.yaml");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("prices.yaml:8:9: "), "{}", errors[0]);
    assert!(errors[0].contains("cachd_input"), "{}", errors[0]);
}

#[test]
fn negative_price_names_file_line_and_column() {
    let text = "\
version: 1
models:
  m:
    prices:
      - effective_from: 2024-01-01
        input: -1
        output: \"-0.5\"
";
    let errors = parse_errors(text, "prices.yaml");
    assert_eq!(
        errors,
        [
            "prices.yaml:6:16: model \"m\": input price -1.000000000 is negative",
            "prices.yaml:7:17: model \"m\": output price -0.500000000 is negative",
        ]
    );
}

#[test]
fn reports_every_semantic_error_with_its_position() {
    let text = "\
version: 2
models:
  a:
    aliases: [b, shared]
    prices:
      - effective_from: 2024-01-01
        input: 1
        output: 1
      - effective_from: 2024-01-01
        input: 2
        output: 2
  b:
    aliases: [shared]
    prices: []
";
    let errors = parse_errors(text, "p.yaml");
    assert_eq!(errors.len(), 5, "{errors:#?}");
    let expected = [
        ("p.yaml:1:10:", "version 2"),
        ("p.yaml:4:15:", "\"b\" of model \"a\" is also a model name"),
        ("p.yaml:9:25:", "two prices effective from 2024-01-01"),
        ("p.yaml:13:15:", "already an alias of \"a\""),
        ("p.yaml:14:13:", "no prices"),
    ];
    for ((at, says), error) in expected.iter().zip(&errors) {
        assert!(error.starts_with(at) && error.contains(says), "{error}");
    }
}

#[test]
fn syntax_and_type_errors_carry_positions() {
    let bad_date = "version: 1\nmodels:\n  m:\n    prices:\n      - effective_from: 2024-13-01\n        input: 1\n        output: 1\n";
    let errors = parse_errors(bad_date, "d.yaml");
    assert!(errors[0].starts_with("d.yaml:5:25: "), "{}", errors[0]);

    let bad_amount = bad_date
        .replace("2024-13-01", "2024-12-01")
        .replace("input: 1", "input: \"1.x\"");
    let errors = parse_errors(&bad_amount, "a.yaml");
    assert!(errors[0].starts_with("a.yaml:6:16: "), "{}", errors[0]);
    assert!(errors[0].contains("invalid USD amount"), "{}", errors[0]);

    let errors = parse_errors("version: [", "s.yaml");
    assert!(errors[0].starts_with("s.yaml:"), "{}", errors[0]);
}

#[test]
fn parses_json_and_reports_json_errors() {
    let json = r#"{
  "version": 1,
  "models": {
    "gpt-4o": {"aliases": ["gpt4o"], "prices": [
      {"effective_from": "2024-08-06", "input": 2.5, "output": "10", "cached_input": 1.25}
    ]}
  }
}"#;
    let book = PriceBook::parse(json, "p.json").unwrap();
    let price = book.lookup("gpt4o", at(2025, 1, 1, 0, 0, 0)).unwrap();
    assert_eq!(
        (price.input, price.output, price.cached_input),
        (usd("2.5"), usd("10"), usd("1.25"))
    );

    let unknown = json.replace("\"cached_input\"", "\"cachd_input\"");
    let errors = parse_errors(&unknown, "p.json");
    assert!(errors[0].starts_with("p.json:5:"), "{}", errors[0]);
    assert!(
        errors[0].contains("unknown field `cachd_input`"),
        "{}",
        errors[0]
    );

    // serde_json would silently keep the second of two equal keys.
    let twice = r#"{"version": 1, "models": {
        "m": {"prices": [{"effective_from": "2024-01-01", "input": 1, "output": 1}]},
        "m": {"prices": [{"effective_from": "2024-01-01", "input": 2, "output": 2}]}}}"#;
    assert!(parse_errors(twice, "t.json")[0].contains("defined twice"));
}

#[test]
fn yaml_flow_mapping_is_accepted_too() {
    let text =
        "{version: 1, models: {m: {prices: [{effective_from: 2024-01-01, input: 1, output: 2}]}}}";
    assert_eq!(PriceBook::parse(text, "flow.yaml").unwrap().len(), 1);
}

#[test]
fn merge_lets_later_files_win() {
    let mut book = sample();
    let later = PriceBook::parse(
        "\
version: 1
models:
  gpt-4o:
    aliases: [gpt-4o-new]
    prices:
      - effective_from: 2024-01-01
        input: 1
        output: 2
  claude-sonnet:
    aliases: [gpt-4o-2024-05-13]
    prices:
      - effective_from: 2024-01-01
        input: 3
        output: 15
",
        "override.yaml",
    )
    .unwrap();
    book.merge(later);
    let day = at(2025, 1, 1, 0, 0, 0);
    // Replaced as a whole, including its alias list.
    assert_eq!(book.lookup("gpt-4o", day).unwrap().input, usd("1"));
    assert_eq!(book.resolve_name("gpt-4o-new"), Some("gpt-4o"));
    assert_eq!(book.resolve_name("gpt4o"), None);
    // A later alias takes the name over from an earlier model.
    assert_eq!(
        book.resolve_name("gpt-4o-2024-05-13"),
        Some("claude-sonnet")
    );
    assert_eq!(
        book.resolve_name("claude-3-5-sonnet"),
        Some("claude-3-5-sonnet")
    );
    assert_eq!(book.len(), 3);
}

#[test]
fn loads_from_disk_and_names_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.yaml");
    std::fs::write(&path, SAMPLE).unwrap();
    assert_eq!(PriceBook::load(&path).unwrap().len(), 3);

    let missing = dir.path().join("missing.yaml");
    let errors = PriceBook::load(&missing).unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .starts_with(&missing.display().to_string())
    );
}

#[test]
fn imports_litellm_entries_exactly() {
    let json = r#"{
  "sample_spec": {"litellm_provider": "one of https://docs.litellm.ai/docs/providers", "mode": "chat", "input_cost_per_token": 0.0},
  "gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06, "supported_modalities": ["text", "image"]},
  "gpt-4o-2024-08-06": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06},
  "gpt-4o-2024-05-13": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 5e-06, "output_cost_per_token": 1.5e-05},
  "gpt-4o-mini": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07, "cache_read_input_token_cost": 7.5e-08},
  "o1": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1.5e-05, "output_cost_per_token": 6e-05, "output_cost_per_reasoning_token": 6E-5},
  "o1-pro": {"litellm_provider": "openai", "mode": "responses", "input_cost_per_token": 0.00015, "output_cost_per_token": 0.0006},
  "claude-sonnet-4-5": {"litellm_provider": "anthropic", "mode": "chat", "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06},
  "text-embedding-3-small": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 2e-08, "output_cost_per_token": 0.0},
  "gpt-3.5-turbo-instruct": {"litellm_provider": "text-completion-openai", "mode": "completion", "input_cost_per_token": 1.5e-06, "output_cost_per_token": 2e-06},
  "ft:gpt-4o-2024-08-06": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 3.75e-06, "output_cost_per_token": 1.5e-05},
  "eu/gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.75e-06, "output_cost_per_token": 1.1e-05},
  "azure/gpt-4o": {"litellm_provider": "azure", "mode": "chat", "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
  "gpt-image-1": {"litellm_provider": "openai", "mode": "image_generation", "input_cost_per_token": 5e-06, "output_cost_per_token": 4e-05},
  "gpt-audio": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "input_cost_per_audio_token": 3.2e-05},
  "tts-only": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06, "supported_output_modalities": ["audio"]},
  "no-output-price": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06},
  "gemini-pro": {"litellm_provider": "gemini", "mode": "chat", "input_cost_per_token": 5e-07, "output_cost_per_token": 1.5e-06}
}"#;
    let day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let text = import_litellm(json, day, &["openai", "anthropic"]).unwrap();
    assert!(
        text.starts_with("# Prices in USD per 1M tokens.\n"),
        "{text}"
    );
    assert!(text.contains("  gpt-4o-mini:\n    provider: openai\n    prices:\n      - effective_from: 2026-01-01\n        input: 0.15\n        output: 0.6\n        cached_input: 0.075\n"), "{text}");

    let book = PriceBook::parse(&text, "imported.yaml").unwrap();
    let names: Vec<&str> = book.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [
            "claude-sonnet-4-5",
            "gpt-3.5-turbo-instruct",
            "gpt-4o",
            // Kept: priced differently from `gpt-4o`. `gpt-4o-2024-08-06` is not.
            "gpt-4o-2024-05-13",
            "gpt-4o-mini",
            "o1",
            "o1-pro",
            "text-embedding-3-small",
        ]
    );
    let on = at(2026, 1, 1, 0, 0, 0);
    assert!(
        book.lookup("gpt-4o", at(2025, 12, 31, 23, 59, 59))
            .is_none()
    );
    let p = book.lookup("gpt-4o-2024-08-06", on).unwrap();
    assert_eq!(
        (p.input, p.output, p.cached_input),
        (usd("2.5"), usd("10"), usd("1.25"))
    );
    let p = book.lookup("claude-sonnet-4-5", on).unwrap();
    assert_eq!(
        (p.input, p.output, p.cached_input, p.cache_write),
        (usd("3"), usd("15"), usd("0.3"), usd("3.75"))
    );
    let p = book.lookup("o1", on).unwrap();
    assert_eq!(p.reasoning, usd("60"));
    assert_eq!(book.lookup("o1-pro", on).unwrap().output, usd("600"));
    assert_eq!(
        book.lookup("text-embedding-3-small", on).unwrap().input,
        usd("0.02")
    );

    let bad = import_litellm("{\n  \"x\": ", day, &["openai"]).unwrap_err();
    assert!(bad.to_string().starts_with("LiteLLM price map:2:"), "{bad}");
}

#[test]
fn builtin_prices_parse_and_know_major_models() {
    let book = PriceBook::builtin();
    assert!(book.len() >= 50, "{}", book.len());
    let latest = DateTime::<Utc>::MAX_UTC;

    let p = book.lookup("gpt-4o", latest).expect("gpt-4o");
    assert_eq!(
        (p.input, p.output, p.cached_input),
        (usd("2.5"), usd("10"), usd("1.25"))
    );
    assert!(book.lookup("gpt-4o-2024-08-06", latest).is_some());
    assert!(book.lookup("openai/gpt-4o-mini", latest).is_some());

    let p = book
        .lookup("claude-sonnet-4-5-20250929", latest)
        .expect("claude sonnet");
    assert_eq!(
        (p.input, p.output, p.cached_input, p.cache_write),
        (usd("3"), usd("15"), usd("0.3"), usd("3.75"))
    );

    // Windows as the providers' model pages state them.
    let windows = [
        ("claude-sonnet-4-5-20250929", 200_000),
        ("anthropic/claude-haiku-4-5", 200_000),
        ("claude-opus-4-6", 1_000_000),
        ("gpt-5.6-sol", 1_050_000),
    ];
    for (model, window) in windows {
        assert_eq!(book.context_window(model), Some(window), "{model}");
    }
    // Output caps as LiteLLM gives them.
    let caps = [
        ("gpt-4o-2024-08-06", 16_384),
        ("claude-sonnet-4-5-20250929", 64_000),
        ("claude-opus-4-6", 128_000),
    ];
    for (model, cap) in caps {
        assert_eq!(book.max_output_tokens(model), Some(cap), "{model}");
    }
}

#[test]
fn token_limits_resolve_like_lookup() {
    let text = "\
version: 1
models:
  gpt-4o:
    aliases: [gpt4o]
    context_window: 128000
    max_output_tokens: 16384
    prices:
      - effective_from: 2024-08-06
        input: 2.5
        output: 10
  gpt-4o-2024-05-13:
    prices:
      - effective_from: 2024-05-13
        input: 5
        output: 15
  claude-3-5-sonnet:
    context_window: 200000
    prices:
      - effective_from: 2024-06-20
        input: 3
        output: 15
  o1:
    max_output_tokens: 100000
    prices:
      - effective_from: 2024-12-17
        input: 15
        output: 60
";
    let book = PriceBook::parse(text, "limits.yaml").unwrap();
    // (model, context_window, max_output_tokens)
    let cases = [
        ("gpt-4o", Some(128_000), Some(16_384)),
        ("gpt4o", Some(128_000), Some(16_384)),
        ("openai/gpt-4o-2024-08-06", Some(128_000), Some(16_384)),
        ("gpt-4o-latest", Some(128_000), Some(16_384)),
        ("claude-3-5-sonnet-20241022", Some(200_000), None),
        ("o1-2024-12-17", None, Some(100_000)),
        // Its own entry, which gives no limits: not the base model's.
        ("gpt-4o-2024-05-13", None, None),
        ("gpt-4o-mini", None, None),
        ("", None, None),
    ];
    for (model, window, cap) in cases {
        assert_eq!(book.context_window(model), window, "{model:?}");
        assert_eq!(book.max_output_tokens(model), cap, "{model:?}");
    }
    // Same in the file's JSON form.
    let json = r#"{"version": 1, "models": {"m": {"context_window": 32768, "max_output_tokens": 4096,
        "prices": [{"effective_from": "2024-01-01", "input": 1, "output": 1}]}}}"#;
    let book = PriceBook::parse(json, "w.json").unwrap();
    assert_eq!(book.context_window("m-20240101"), Some(32_768));
    assert_eq!(book.max_output_tokens("m-20240101"), Some(4096));
}

#[test]
fn token_limits_must_be_positive() {
    let text = "\
version: 1
models:
  zero:
    context_window: 0
    prices:
      - effective_from: 2024-01-01
        input: 1
        output: 1
  negative:
    context_window: -4096
    prices:
      - effective_from: 2024-01-01
        input: 1
        output: 1
  no-output:
    context_window: 8192
    max_output_tokens: 0
    prices:
      - {effective_from: 2024-01-01, input: 1, output: 1}
  negative-output:
    max_output_tokens: -100
    prices:
      - {effective_from: 2024-01-01, input: 1, output: 1}
";
    assert_eq!(
        parse_errors(text, "w.yaml"),
        [
            "w.yaml:4:21: model \"zero\": context_window 0 is not a positive number of tokens",
            "w.yaml:10:21: model \"negative\": context_window -4096 is not a positive number of tokens",
            "w.yaml:17:24: model \"no-output\": max_output_tokens 0 is not a positive number of tokens",
            "w.yaml:21:24: model \"negative-output\": max_output_tokens -100 is not a positive number of tokens",
        ]
    );

    let fraction = text.replace("context_window: 0", "context_window: 1.5");
    let errors = parse_errors(&fraction, "f.yaml");
    assert!(errors[0].starts_with("f.yaml:4:21: "), "{}", errors[0]);
    let fraction = text.replace("max_output_tokens: 0", "max_output_tokens: 1.5");
    let errors = parse_errors(&fraction, "f.yaml");
    assert!(errors[0].starts_with("f.yaml:17:24: "), "{}", errors[0]);
}

#[test]
fn merge_replaces_the_context_window_with_the_entry() {
    let mut book = PriceBook::parse(
        "version: 1\nmodels:\n  m:\n    context_window: 8192\n    prices:\n      - {effective_from: 2024-01-01, input: 1, output: 1}\n",
        "base.yaml",
    )
    .unwrap();
    assert_eq!(book.context_window("m"), Some(8192));
    let later = PriceBook::parse(
        "version: 1\nmodels:\n  m:\n    prices:\n      - {effective_from: 2024-01-01, input: 2, output: 2}\n",
        "later.yaml",
    )
    .unwrap();
    book.merge(later);
    assert_eq!(book.context_window("m"), None);
}

#[test]
fn import_takes_the_context_window_from_max_input_tokens() {
    let json = r#"{
  "sample_spec": {"litellm_provider": "one of https://docs.litellm.ai/docs/providers", "mode": "chat", "max_tokens": "LEGACY parameter", "max_input_tokens": "max input tokens"},
  "gpt-4o": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 16384, "max_input_tokens": 128000, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
  "gpt-4o-2024-08-06": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 16384, "max_input_tokens": 128000, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
  "gpt-4o-2024-05-13": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 4096, "max_input_tokens": 64000, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
  "legacy-only": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 4096, "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
  "zero-window": {"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 0, "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
  "text-embedding-3-small": {"litellm_provider": "openai", "mode": "embedding", "max_tokens": 8191, "max_input_tokens": 8191, "input_cost_per_token": 2e-08, "output_cost_per_token": 0.0}
}"#;
    let day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let text = import_litellm(json, day, &["openai"]).unwrap();
    assert!(
        text.contains("  gpt-4o:\n    provider: openai\n    context_window: 128000\n    prices:\n"),
        "{text}"
    );

    let book = PriceBook::parse(&text, "imported.yaml").unwrap();
    let names: Vec<&str> = book.iter().map(|(name, _)| name).collect();
    // Same rates as `gpt-4o` but a different window: kept, or its window would be lost.
    // `gpt-4o-2024-08-06` matches `gpt-4o` in both and is left to resolve there.
    assert_eq!(
        names,
        [
            "gpt-4o",
            "gpt-4o-2024-05-13",
            "legacy-only",
            "text-embedding-3-small",
            "zero-window",
        ]
    );
    assert_eq!(book.context_window("gpt-4o"), Some(128_000));
    assert_eq!(book.context_window("gpt-4o-2024-08-06"), Some(128_000));
    assert_eq!(book.context_window("gpt-4o-2024-05-13"), Some(64_000));
    assert_eq!(book.context_window("text-embedding-3-small"), Some(8191));
    // `max_tokens` is LiteLLM's output limit here, not an input window.
    assert_eq!(book.context_window("legacy-only"), None);
    assert_eq!(book.context_window("zero-window"), None);
}

#[test]
fn import_carries_max_output_tokens() {
    let json = r#"{
  "sample_spec": {"litellm_provider": "one of https://docs.litellm.ai/docs/providers", "mode": "chat", "max_output_tokens": "max output tokens, if the provider specifies it"},
  "gpt-4o": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 16384, "max_input_tokens": 128000, "max_output_tokens": 16384, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
  "gpt-4o-2024-08-06": {"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "max_output_tokens": 16384, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
  "gpt-4o-2024-05-13": {"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "max_output_tokens": 4096, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
  "claude-sonnet-4-5": {"litellm_provider": "anthropic", "mode": "chat", "max_output_tokens": 64000, "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05},
  "zero-cap": {"litellm_provider": "openai", "mode": "chat", "max_output_tokens": 0, "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
  "text-cap": {"litellm_provider": "openai", "mode": "chat", "max_output_tokens": "16k", "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
  "legacy-only": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 4096, "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06}
}"#;
    let day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let text = import_litellm(json, day, &["openai", "anthropic"]).unwrap();
    assert!(
        text.contains(
            "  gpt-4o:\n    provider: openai\n    context_window: 128000\n    max_output_tokens: 16384\n    prices:\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("  claude-sonnet-4-5:\n    provider: anthropic\n    max_output_tokens: 64000\n    prices:\n"),
        "{text}"
    );

    let book = PriceBook::parse(&text, "imported.yaml").unwrap();
    let names: Vec<&str> = book.iter().map(|(name, _)| name).collect();
    // `gpt-4o-2024-05-13` differs from `gpt-4o` only in its cap: kept, or it would resolve
    // to the larger one.
    assert_eq!(
        names,
        [
            "claude-sonnet-4-5",
            "gpt-4o",
            "gpt-4o-2024-05-13",
            "legacy-only",
            "text-cap",
            "zero-cap",
        ]
    );
    let caps = [
        ("gpt-4o", Some(16_384)),
        ("gpt-4o-2024-08-06", Some(16_384)),
        ("gpt-4o-2024-05-13", Some(4096)),
        ("claude-sonnet-4-5-20250929", Some(64_000)),
        ("zero-cap", None),
        ("text-cap", None),
        // `max_tokens` is never read as either limit.
        ("legacy-only", None),
    ];
    for (model, cap) in caps {
        assert_eq!(book.max_output_tokens(model), cap, "{model}");
    }
}
