//! `tollgate demo`: the whole path on one machine with no keys and no network. A real proxy
//! process on loopback in front of the simulated provider, synthetic traffic from several
//! teams (part of it through a cheap-first cascade policy, part of it repeated and answered
//! by the response cache), then a spend report read back from the ledger, savings included.
//! Requests belong to workflows whose outcomes each team reports: cost per success.
//! One team has a daily budget it overruns: its alerts go to a webhook the demo runs.

mod webhook;

use crate::ledger;
use crate::money::NanoUsd;
use crate::report::{self, Dim, Format};
use crate::server::ready::Ready;
use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who sends traffic: (key, team, project, env, share of requests).
const CALLERS: &[(&str, &str, &str, &str, u32)] = &[
    ("demo-search-prod", "search", "ranking", "prod", 40),
    ("demo-search-staging", "search", "ranking", "staging", 10),
    ("demo-support-prod", "support", "assistant", "prod", 30),
    ("demo-growth-dev", "growth", "onboarding", "dev", 20),
];

const OPENAI_MODELS: [&str; 3] = ["gpt-5-mini", "gpt-5", "o4-mini"];
const ANTHROPIC_MODELS: [&str; 2] = ["claude-sonnet-5", "claude-haiku-4-5"];
const EMBEDDING_MODEL: &str = "text-embedding-3-small";
const MODELS: [&str; 6] = [
    OPENAI_MODELS[0],
    OPENAI_MODELS[1],
    OPENAI_MODELS[2],
    ANTHROPIC_MODELS[0],
    ANTHROPIC_MODELS[1],
    EMBEDDING_MODEL,
];

const FEATURES: &[&str] = &["summarize", "classify", "answer", "extract"];

/// Workflows per team and feature: each request belongs to one (`x-tollgate-workflow`),
/// and each workflow gets an outcome once the traffic is in.
const WORKFLOWS: u32 = 4;

/// The share of workflows reported `success` (the rest `failure`).
const SUCCESS_RATE: f64 = 0.75;

/// The model alias chat clients ask for to go cheap-first.
const CHEAP_FIRST: &str = "tollgate/cheap-first";

/// The feature whose requests repeat: a few fixed tickets classified again and again.
const REPEATED_FEATURE: &str = "classify";

/// The demo's policy: chat asked of the alias tries the mini model first and escalates to
/// the full one when the answer is cut short or refused; repeated classifications are
/// answered from the cache, on either path.
const POLICY: &str = "# Cheap first: gpt-5-mini answers unless a judge rejects its answer.
rules:
  - name: cheap-first
    priority: 10
    match: { model: tollgate/cheap-first, endpoint: /v1/chat/completions }
    cascade:
      steps:
        - { provider: sim, model: gpt-5-mini }
        - { provider: sim, model: gpt-5 }
      judges: { finish: true, refusal: true, json: true }
    cache: { scope: team }
  # Classification asks the same questions again: answer repeats from the cache.
  - name: classify-cache
    match: { feature: classify }
    cache: { scope: team }
";

/// The budget the demo's traffic overruns: growth's spend per day, alerting (and still
/// serving) at 50, 80 and 100%.
const BUDGET: &str = "growth-daily";

/// The budget's amount per request sent. Growth sends about a fifth of the requests at
/// about a tenth of a cent each, so it spends about twice its budget, whatever the count.
const BUDGET_PER_REQUEST: NanoUsd = NanoUsd(100_000);

/// Both listeners on port 0: the proxy reports the ports it was given on its ready line.
/// Budget alerts go to the demo's webhook at `hook`, signed with the secret in
/// [`webhook::SECRET_ENV`].
fn config(
    data_dir: &Path,
    hook: SocketAddr,
    budget: NanoUsd,
    shipping: Option<&Shipping>,
) -> String {
    let mut out = format!(
        "listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
data_dir: {}
policies: policies
ledger: {{ flush_interval_ms: 20 }}
cache: {{ enabled: true }}
server: {{ threads: 2, grace_period_secs: 0 }}
providers:
  sim:
    kind: simulated
    simulated: {{ first_token_delay_ms: 40, token_interval_ms: 2 }}
models:
",
        data_dir.display()
    );
    for model in MODELS {
        out.push_str(&format!("  {model}: {{ provider: sim }}\n"));
    }
    out.push_str("keys:\n");
    for (i, (_, team, project, env, _)) in CALLERS.iter().enumerate() {
        out.push_str(&format!(
            "  - {{ name: {team}-{env}, key_env: TOLLGATE_DEMO_KEY_{i}, team: {team}, project: {project}, env: {env} }}\n"
        ));
    }
    out.push_str(&format!(
        "budgets:
  - name: {BUDGET}
    scope: {{ team: growth }}
    period: day
    amount_usd: \"{budget}\"
    alert_at: [50, 80, 100]
    action: alert
alerts:
  webhooks:
    - {{ name: demo, format: json, url: \"http://{hook}/budget-alerts\", secret_env: {} }}
",
        webhook::SECRET_ENV
    ));
    if let Some(s) = shipping {
        // Shipped segments are kept: the report at the end reads the ledger.
        out = out.replace(
            "ledger: { flush_interval_ms: 20 }",
            "ledger: { flush_interval_ms: 20, shipped_retention_secs: 86400 }",
        );
        out.push_str(&format!(
            "telemetry:\n  clickhouse:\n    url: \"{}\"\n    database: {}\n    batch_period_ms: 100\n    migrate_on_start: true\n",
            s.url, s.database
        ));
        // A server with a password (the compose stack's) takes it from the environment.
        if std::env::var_os(CLICKHOUSE_PASSWORD_ENV).is_some() {
            out.push_str(&format!("    password_env: {CLICKHOUSE_PASSWORD_ENV}\n"));
        }
    }
    out
}

/// The variable holding the password of `--clickhouse`'s `default` user, if it has one.
pub const CLICKHOUSE_PASSWORD_ENV: &str = "CLICKHOUSE_PASSWORD";

/// Where `--clickhouse` ships the demo's records.
pub struct Shipping {
    pub url: String,
    pub database: String,
}

/// How long the demo waits for its records to reach ClickHouse.
const SHIP_DEADLINE: Duration = Duration::from_secs(60);

/// Waits until the sink has shipped `want` records of each table and its lag metrics are
/// all 0 (the lag gauge alone can lag behind a record just written), or the deadline passes;
/// the number of rows shipped to each table named in `want`.
fn wait_shipped(
    scrape: impl Fn() -> anyhow::Result<String>,
    want: &[(&str, u64)],
) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + SHIP_DEADLINE;
    loop {
        let text = scrape()?;
        let samples = |name: &str| -> Vec<(String, f64)> {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(series, v)| Some((series.to_string(), v.parse().ok()?)))
                .collect()
        };
        let lag = samples("tollgate_sink_lag_records");
        let shipped_total = samples("tollgate_sink_shipped_total");
        let shipped: Vec<u64> = want
            .iter()
            .map(|(table, _)| {
                let series = format!("table=\"{table}\"");
                shipped_total
                    .iter()
                    .find(|(s, _)| s.contains(&series))
                    .map_or(0, |(_, v)| *v as u64)
            })
            .collect();
        let all_in = want.iter().zip(&shipped).all(|((_, w), s)| s >= w);
        if all_in && lag.iter().all(|(_, v)| *v == 0.0) {
            return Ok(shipped);
        }
        if Instant::now() > deadline {
            bail!(
                "records did not reach ClickHouse within {} s",
                SHIP_DEADLINE.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the child proxy even when the demo fails half-way.
struct ProxyProcess(Child);

impl ProxyProcess {
    fn terminate(&mut self) -> anyhow::Result<()> {
        // SIGTERM: the proxy finishes in-flight requests and flushes the ledger.
        let pid = i32::try_from(self.0.id()).context("pid")?;
        // SAFETY: signalling a child process we spawned and have not yet reaped.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "could not signal the proxy: {}",
                std::io::Error::last_os_error()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("proxy did not stop within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run(
    requests: usize,
    data_dir: Option<PathBuf>,
    shipping: Option<Shipping>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let kept = data_dir.is_some();
    let dir = data_dir.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let hook = rt.block_on(webhook::Receiver::start(secret.clone()))?;
    let budget = NanoUsd(BUDGET_PER_REQUEST.0 * requests.max(1) as i64);
    let config_path = dir.join("tollgate-demo.yaml");
    std::fs::write(
        &config_path,
        config(&dir.join("data"), hook.addr, budget, shipping.as_ref()),
    )?;
    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::write(dir.join("policies/cheap-first.yaml"), POLICY)?;

    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--config"]).arg(&config_path);
    for (i, (key, ..)) in CALLERS.iter().enumerate() {
        cmd.env(format!("TOLLGATE_DEMO_KEY_{i}"), key);
    }
    cmd.env(webhook::SECRET_ENV, &secret);
    let log_path = dir.join("tollgate-demo.log");
    let log = std::fs::File::create(&log_path)?;
    let mut proxy = ProxyProcess(cmd.stdout(Stdio::piped()).stderr(log).spawn()?);
    let stdout = proxy.0.stdout.take().context("proxy stdout")?;
    let ready = Ready::wait_for(stdout, Duration::from_secs(30)).map_err(|e| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        anyhow::anyhow!("the proxy did not start: {e}\n{log}")
    })?;
    let (Some(proxy_addr), Some(admin)) = (ready.addr("proxy"), ready.addr("admin")) else {
        bail!("the proxy's ready line lacks an address: {ready}");
    };
    println!("tollgate demo: proxy on {proxy_addr}, metrics on {admin}/metrics");

    let scrape = || {
        rt.block_on(async {
            reqwest::get(format!("http://{admin}/metrics"))
                .await?
                .text()
                .await
        })
    };
    // Spend a kept data dir had already recorded today counts: only thresholds crossed
    // by this run's traffic send alerts now.
    let ledger_dir = dir.join("data/ledger");
    let earlier = recorded(&ledger_dir);
    let before = budget_spend(&scrape()?);
    let sent = rt.block_on(drive(proxy_addr, requests))?;
    // A client that gave up mid-stream is recorded (and its spend counted) once the proxy
    // notices: every request's record is in before the budget is read.
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorded(&ledger_dir) < earlier + requests && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcomes_reported = rt.block_on(report_outcomes(proxy_addr))?;
    let metrics = scrape()?;
    let after = budget_spend(&metrics);
    let crossed: Vec<u32> = [50, 80, 100]
        .into_iter()
        .filter(|&pct| !reached(before, budget, pct) && reached(after, budget, pct))
        .collect();
    // Alerts are sent in the background; the proxy is stopped once they are in.
    let alerts_in = rt.block_on(hook.wait_for(BUDGET, &crossed, Duration::from_secs(10)));
    let shipped = match &shipping {
        Some(_) => Some(wait_shipped(
            || Ok(scrape()?),
            &[
                (
                    "requests",
                    recorded(&ledger_dir).saturating_sub(earlier) as u64,
                ),
                ("outcomes", outcomes_reported as u64),
            ],
        )?),
        None => None,
    };
    proxy.terminate()?;

    let records = ledger::read_all::<crate::record::Record>(&ledger_dir)?;
    println!(
        "sent {sent} requests; the ledger holds {} records ({} streamed, {} with estimated usage)\n",
        records.len(),
        records.iter().filter(|r| r.stream).count(),
        records
            .iter()
            .filter(|r| r.usage_source == crate::usage::UsageSource::Estimated)
            .count(),
    );
    for by in [vec![Dim::Team, Dim::Project, Dim::Env], vec![Dim::Model]] {
        let rows = report::aggregate(&records, &by);
        println!("{}", report::render(&rows, &by, Format::Table));
    }
    let routed: Vec<_> = records
        .iter()
        .filter(|r| r.policy == "cheap-first")
        .collect();
    let escalated = routed.iter().filter(|r| r.escalations > 0).count();
    let totals = report::aggregate(routed.iter().copied(), &[]);
    if let Some(total) = totals.last() {
        println!(
            "Policy cheap-first: {} requests, {escalated} escalated to gpt-5; cost {} USD, {} USD less than on gpt-5 (saved_usd).\n",
            routed.len(),
            total.cost,
            total.saved,
        );
    }
    let totals = report::aggregate(&records, &[]);
    if let Some(total) = totals.last() {
        println!(
            "Cache: {} of {} requests answered from the cache, with no upstream call and cost 0; they saved {} USD (cache_saved_usd).\n",
            total.cache_hits, total.requests, total.cache_saved,
        );
    }
    let outcomes = ledger::read_all::<crate::record::OutcomeRecord>(
        &ledger::Stream::Outcomes.dir(&ledger_dir),
    )?;
    println!(
        "Outcomes: {outcomes_reported} reported, one per workflow of each team ({} success); per label, over the requests they cover:\n{}",
        outcomes.iter().filter(|o| o.outcome == "success").count(),
        report::outcomes::render(
            &report::outcomes::aggregate(&records, &outcomes),
            Format::Table
        ),
    );
    hook.print();
    if crossed.is_empty() && reached(before, budget, 50) {
        println!(
            "  (earlier runs in this data dir crossed them today; each is sent once per period)"
        );
    }
    if !alerts_in {
        println!(
            "  (not every threshold crossed had arrived after 10 s: see {})",
            log_path.display()
        );
    }
    let growth: Vec<_> = records.iter().filter(|r| r.team == "growth").collect();
    let refused = growth
        .iter()
        .filter(|r| r.error.as_deref() == Some("budget_exceeded"))
        .count();
    println!(
        "Budget {BUDGET} (team growth, daily, action alert): {} USD spent of {budget} ({}%), per tollgate_budget_spend_usd; {refused} of growth's {} requests refused.\n",
        after,
        i128::from(after.0) * 100 / i128::from(budget.0),
        growth.len(),
    );
    let exported = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tollgate_requests_total") || l.starts_with("tollgate_cost_usd_total")
        })
        .count();
    println!("Prometheus exposed {exported} request/cost series at the admin port.");
    if let (Some(s), Some(rows)) = (&shipping, shipped) {
        println!(
            "ClickHouse: {} request records and {} outcomes shipped to database {} (with the attempts and the hourly rollup); the dashboards in dashboards/ read them.",
            rows[0], rows[1], s.database
        );
    }
    let ledger_note = if kept {
        format!("ledger kept in {}", dir.join("data/ledger").display())
    } else {
        "pass --data-dir DIR to keep the ledger".to_string()
    };
    println!(
        "Done in {:.1} s; {ledger_note}.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Request records in the ledger so far.
fn recorded(ledger_dir: &Path) -> usize {
    ledger::read_all::<crate::record::Record>(ledger_dir).map_or(0, |r| r.len())
}

/// The demo budget's spend in a metrics scrape (0 before its first request).
fn budget_spend(metrics: &str) -> NanoUsd {
    let series = format!("tollgate_budget_spend_usd{{budget=\"{BUDGET}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .and_then(NanoUsd::from_f64_usd)
        .unwrap_or_default()
}

/// Whether `spend` is at least `pct`% of `amount`, as the proxy decides it.
fn reached(spend: NanoUsd, amount: NanoUsd, pct: u32) -> bool {
    i128::from(spend.0) * 100 >= i128::from(amount.0) * i128::from(pct)
}

/// Sends `n` mixed requests, 16 at a time.
async fn drive(proxy: SocketAddr, n: usize) -> anyhow::Result<usize> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut rng = StdRng::seed_from_u64(i as u64);
            one_request(&client, proxy, &mut rng).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await?.is_ok() {
            ok += 1;
        }
    }
    Ok(ok)
}

fn pick_caller(rng: &mut StdRng) -> &'static str {
    let total: u32 = CALLERS.iter().map(|c| c.4).sum();
    let mut x = rng.random_range(0..total);
    for c in CALLERS {
        if x < c.4 {
            return c.0;
        }
        x -= c.4;
    }
    CALLERS[0].0
}

async fn one_request(
    client: &reqwest::Client,
    proxy: SocketAddr,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let key = pick_caller(rng);
    let feature = FEATURES[rng.random_range(0..FEATURES.len())];
    let user = format!("user-{}", rng.random_range(1..=25));
    let stream = rng.random_bool(0.5);
    let output = rng.random_range(20..200).to_string();
    let base = format!("http://{proxy}");
    // Classification repeats a handful of tickets, with sampling pinned so the answers
    // may be reused.
    let repeated = feature == REPEATED_FEATURE;
    let (topic, sentences): (u32, usize) = (rng.random_range(0..1000), rng.random_range(5..120));
    let workflow = workflow_id(feature, topic % WORKFLOWS);
    let prompt = if repeated {
        format!("Classify support ticket {}.", topic % 3)
    } else {
        format!(
            "Request about topic {topic}. {}",
            "Context sentence. ".repeat(sentences)
        )
    };
    let kind = rng.random_range(0..100);
    let req = if kind < 45 {
        // A third of chat goes cheap-first; the mini model cuts one answer in four short.
        let cheap_first = rng.random_bool(1.0 / 3.0);
        let model = if cheap_first {
            CHEAP_FIRST
        } else {
            OPENAI_MODELS[rng.random_range(0..OPENAI_MODELS.len())]
        };
        let fault = if cheap_first && rng.random_bool(0.25) {
            "truncate@gpt-5-mini"
        } else {
            ""
        };
        client.post(format!("{base}/v1/chat/completions")).bearer_auth(key)
            .header("x-sim-fault", fault)
            .json(&pinned(json!({
            "model": model, "stream": stream,
            "messages": [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": prompt}]
        }), repeated))
    } else if kind < 85 {
        let model = ANTHROPIC_MODELS[rng.random_range(0..ANTHROPIC_MODELS.len())];
        client.post(format!("{base}/v1/messages")).header("x-api-key", key)
            .header("anthropic-version", "2023-06-01").json(&pinned(json!({
            "model": model, "max_tokens": 1024, "stream": stream,
            "system": [{"type": "text", "text": "Company handbook. ".repeat(200), "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": prompt}]
        }), repeated))
    } else if kind < 95 {
        client
            .post(format!("{base}/v1/embeddings"))
            .bearer_auth(key)
            .json(&json!({"model": EMBEDDING_MODEL, "input": [prompt]}))
    } else {
        // Some clients give up mid-stream; their calls are still metered.
        let resp = client.post(format!("{base}/v1/chat/completions")).bearer_auth(key)
            .header("x-tollgate-feature", feature).header("x-tollgate-workflow", &workflow)
            .header("x-sim-output-tokens", "300")
            .json(&json!({"model": OPENAI_MODELS[1], "stream": true, "messages": [{"role": "user", "content": prompt}]}))
            .send().await?;
        let mut resp = resp;
        let _ = resp.chunk().await?;
        return Ok(());
    };
    let resp = req
        .header("x-tollgate-feature", feature)
        .header("x-tollgate-workflow", workflow)
        .header("x-tollgate-user", user)
        .header("x-sim-output-tokens", output)
        .send()
        .await?;
    resp.bytes().await?;
    Ok(())
}

fn workflow_id(feature: &str, n: u32) -> String {
    format!("{feature}-{n}")
}

/// Reports an outcome for every workflow of every team, in one batch per team (with a key
/// of that team: outcomes join only their own team's requests); the number reported.
async fn report_outcomes(proxy: SocketAddr) -> anyhow::Result<usize> {
    let client = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(u64::from(WORKFLOWS));
    let mut teams_done = Vec::new();
    let mut reported = 0;
    for &(key, team, ..) in CALLERS {
        if teams_done.contains(&team) {
            continue;
        }
        teams_done.push(team);
        let outcomes: Vec<_> = FEATURES
            .iter()
            .flat_map(|feature| (0..WORKFLOWS).map(move |n| workflow_id(feature, n)))
            .map(|workflow| {
                if rng.random_bool(SUCCESS_RATE) {
                    let value = rng.random_range(5..200);
                    json!({"workflow_id": workflow, "outcome": "success", "value": value})
                } else {
                    json!({"workflow_id": workflow, "outcome": "failure"})
                }
            })
            .collect();
        let n = outcomes.len();
        client
            .post(format!("http://{proxy}{}", crate::proxy::outcomes::PATH))
            .bearer_auth(key)
            .json(&json!({ "outcomes": outcomes }))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("reporting {team}'s outcomes"))?;
        reported += n;
    }
    Ok(reported)
}

/// `body` with sampling pinned (`temperature: 0`) when `pin`: only such requests are cached.
fn pinned(mut body: serde_json::Value, pin: bool) -> serde_json::Value {
    if pin {
        body["temperature"] = json!(0);
    }
    body
}
