//! Test harness: the real `tollgate` binary over real sockets, in front of an in-test
//! upstream (the simulated provider, or a purpose-built one).

#![allow(dead_code)]

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tollgate::record::Record;
use tollgate::server::ready::Ready;
use tollgate::sim::{SimOptions, SimProvider};

/// Virtual key used by the default test config; bound to team `search`, project `ranking`.
pub const KEY: &str = "tg-test-key-search";
/// A second key with no bindings, so headers decide attribution.
pub const OPEN_KEY: &str = "tg-test-key-open";
/// The admin token in `TEST_ADMIN_TOKEN`, for configs that set `admin.token_env`.
pub const ADMIN_TOKEN: &str = "tg-test-admin-token";

/// Test prices in USD per 1M tokens, chosen so every per-token price is a whole number of
/// nano-USD: cost assertions are then plain integer arithmetic.
pub const PRICES: &str = r#"
version: 1
models:
  gpt-4o-mini:
    prices:
      - effective_from: 2024-01-01
        input: 2
        output: 8
        cached_input: 1
  o3-mini:
    prices:
      - effective_from: 2024-01-01
        input: 1
        output: 4
        cached_input: 0.5
        reasoning: 5
  claude-sonnet-4-5:
    prices:
      - effective_from: 2024-01-01
        input: 3
        output: 15
        cached_input: 0.3
        cache_write: 3.75
  text-embedding-3-small:
    prices:
      - effective_from: 2024-01-01
        input: 0.02
        output: 0
"#;

/// Nano-USD per token for a price of `usd_per_million` (e.g. 2 → 2000).
pub fn nanos_per_token(usd_per_million: f64) -> i64 {
    (usd_per_million * 1000.0).round() as i64
}

/// A loopback port with no listener, for an upstream that refuses connections. A socket stays
/// bound to it, never listening, for the rest of this test process: connections to it are
/// refused, and nothing else can bind it meanwhile (a port taken by binding and closing a
/// listener could be handed to the next socket that asks for port 0).
pub fn free_port() -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = socket.local_addr().unwrap().port();
    // Kept open until the process exits: the reservation is the point.
    std::mem::forget(socket);
    port
}

/// The simulated provider, served from this test process.
pub struct Upstream {
    pub addr: SocketAddr,
    pub sim: SimProvider,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn start_sim() -> Upstream {
    start_sim_with(SimOptions::default()).await
}

/// The simulated provider with its timing set.
pub async fn start_sim_with(opts: SimOptions) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = SimProvider::new(opts);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = sim.clone();
    tokio::spawn(async move {
        let _ = served
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    Upstream {
        addr,
        sim,
        _stop: tx,
    }
}

/// What a [`recording_upstream`] received for one call.
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// An upstream that keeps every request it receives (headers and body bytes) and answers
/// one fixed chat completion.
pub async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let store = seen.clone();
    let app = axum::Router::new().fallback(move |headers: http::HeaderMap, body: bytes::Bytes| {
        let store = store.clone();
        async move {
            store.lock().unwrap().push(Received { headers, body });
            axum::Json(serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
            }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Config for a proxy in front of `upstream` with both API formats routed to it.
pub fn config_for(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
builtin_prices: false
prices: [prices.yaml]
ledger:
  flush_interval_ms: 5
server:
  threads: 2
  grace_period_secs: 0
providers:
  openai:
    kind: openai_compatible
    base_url: http://{upstream}
    api_key_env: TEST_OPENAI_KEY
    read_timeout_ms: 10000
  anthropic:
    kind: anthropic
    base_url: http://{upstream}
    api_key_env: TEST_ANTHROPIC_KEY
    read_timeout_ms: 10000
models:
  gpt-4o-mini: {{ provider: openai }}
  o3-mini: {{ provider: openai }}
  text-embedding-3-small: {{ provider: openai }}
  cheap: {{ provider: openai, upstream_model: gpt-4o-mini }}
  "claude-*": {{ provider: anthropic }}
keys:
  - name: search-prod
    key_env: TEST_VKEY_SEARCH
    team: search
    project: ranking
    env: prod
    owner: ana@example.com
  - name: open
    key_env: TEST_VKEY_OPEN
{extra}
"#
    )
}

/// Environment the test configs read keys from.
pub fn test_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TEST_OPENAI_KEY", "sk-upstream-openai"),
        ("TEST_ANTHROPIC_KEY", "sk-ant-upstream"),
        ("TEST_VKEY_SEARCH", KEY),
        ("TEST_VKEY_OPEN", OPEN_KEY),
        ("TEST_ADMIN_TOKEN", ADMIN_TOKEN),
    ]
}

/// A running `tollgate serve`.
pub struct Proxy {
    child: Option<Child>,
    /// The ports the running process bound (new ones after [`Proxy::restart`]).
    pub port: u16,
    pub admin_port: u16,
    pub dir: TempDir,
}

impl Proxy {
    /// Starts the binary with `config` (listen addresses on port 0 are prepended) and reads
    /// the ports it bound from its ready line.
    pub async fn start(config: &str) -> Proxy {
        Self::start_with(config, &[]).await
    }

    pub async fn start_with(config: &str, files: &[(&str, &[u8])]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let full =
            format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\ndata_dir: data\n{config}");
        std::fs::write(dir.path().join("tollgate.yaml"), full).unwrap();
        std::fs::write(dir.path().join("prices.yaml"), PRICES).unwrap();
        for (name, content) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let mut proxy = Proxy {
            child: None,
            port: 0,
            admin_port: 0,
            dir,
        };
        proxy.spawn().await;
        proxy
    }

    /// Runs the binary and waits until it serves on the ports its ready line names.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tollgate.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config"])
            .arg(self.config_path())
            .envs(test_env())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.child = Some(child);
        let ready =
            tokio::task::spawn_blocking(move || Ready::wait_for(stdout, Duration::from_secs(30)))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("proxy did not start: {e}\n{}", self.log()));
        self.port = ready.addr("proxy").expect("proxy address").port();
        self.admin_port = ready.addr("admin").expect("admin address").port();
        self.wait_ready().await;
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.yaml")
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the running proxy.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// SIGKILLs the proxy: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the proxy again with the same config and data dir. It binds new ports, so no
    /// other process can be holding them; `port` and `admin_port` follow.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Runs another `tollgate` subcommand against this proxy's config.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .envs(test_env())
            .output()
            .unwrap()
    }

    /// Both sockets accept once the ready line is out; this waits for the ledger writer.
    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client.get(self.admin_url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tollgate.log")).unwrap_or_default()
    }

    pub fn ledger_dir(&self) -> PathBuf {
        self.dir.path().join("data/ledger")
    }

    /// Waits until the ledger holds at least `n` records, and returns them all.
    pub async fn records(&self, n: usize) -> Vec<Record> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = tollgate::ledger::read_all::<tollgate::record::Record>(&self.ledger_dir())
                .unwrap_or_default();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "ledger has {} records, expected {n}:\n{}",
                got.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The record of `request_id`, once the ledger holds at least `n` records.
    pub async fn record_of(&self, n: usize, request_id: &str) -> Record {
        self.records(n)
            .await
            .into_iter()
            .find(|r| r.request_id == request_id)
            .unwrap_or_else(|| panic!("no record for {request_id}"))
    }

    /// The single record of a test that made one request.
    pub async fn only_record(&self) -> Record {
        let mut all = self.records(1).await;
        // Give a second record, if any, a chance to show up and fail the test.
        tokio::time::sleep(Duration::from_millis(50)).await;
        all = tollgate::ledger::read_all::<tollgate::record::Record>(&self.ledger_dir())
            .unwrap_or(all);
        assert_eq!(all.len(), 1, "expected one record, got {all:#?}");
        all.remove(0)
    }

    /// Waits up to 20 s until the sample of `name` with `labels` reads `value`; returns the
    /// metrics text.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.metrics().await;
            if metric(&m, name, labels) == Some(value) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} never reached {value}: {m}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("proxy did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The request id the proxy answered with (`x-tollgate-request-id`).
pub fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs `body` as JSON to the proxy's `path` the way OpenAI clients do, with
/// `Authorization: Bearer KEY` and the extra `headers`.
pub async fn openai(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    openai_as(proxy, KEY, path, headers, body).await
}

/// [`openai`] authenticated with `key` instead of [`KEY`].
pub async fn openai_as(
    proxy: &Proxy,
    key: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    let request = client().post(proxy.url(path)).bearer_auth(key);
    send(request, headers, body).await
}

/// POSTs `body` as JSON to the proxy's `path` the way Anthropic clients do, with
/// `x-api-key: KEY`, `anthropic-version: 2023-06-01` and the extra `headers`.
pub async fn anthropic(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    let request = client()
        .post(proxy.url(path))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01");
    send(request, headers, body).await
}

async fn send(
    mut request: reqwest::RequestBuilder,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.json(body).send().await.unwrap()
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The expected exact cost string for token counts at per-token nano prices.
pub fn cost_str(nanos: i64) -> String {
    tollgate::money::NanoUsd(nanos).to_string()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// The value of the sample of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, v)| v.parse().ok())
}
pub mod chromium;
pub mod clickhouse;
pub mod grafana;
pub mod redis;
