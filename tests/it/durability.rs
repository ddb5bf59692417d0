//! No served call without a record: a proxy SIGKILLed at random moments under concurrent
//! streaming and non-streaming load has exactly one ledger record for every request whose
//! client received a complete answer, and ClickHouse ends up with the same records.

use crate::common::clickhouse::{ClickHouse, telemetry};
use crate::common::*;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate::sim::SimOptions;

/// The kinds of call the load mixes.
#[derive(Clone, Copy)]
enum Call {
    OpenAi { stream: bool },
    Anthropic { stream: bool },
}

/// Sends one call; returns true only when the client received the complete answer.
async fn call(client: &reqwest::Client, port: u16, id: &str, kind: Call) -> bool {
    let base = format!("http://127.0.0.1:{port}");
    let request = match kind {
        Call::OpenAi { stream } => client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({
                "model": "gpt-4o-mini",
                "stream": stream,
                "messages": [{"role": "user", "content": format!("call {id}")}],
            })),
        Call::Anthropic { stream } => client
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 64,
                "stream": stream,
                "messages": [{"role": "user", "content": format!("call {id}")}],
            })),
    };
    let Ok(resp) = request
        .header("x-request-id", id)
        .header("x-sim-output-tokens", "20")
        .send()
        .await
    else {
        return false;
    };
    if resp.status() != 200 {
        return false;
    }
    let Ok(body) = resp.text().await else {
        return false;
    };
    match kind {
        Call::OpenAi { stream: true } => sse_data(&body).last().is_some_and(|d| d == "[DONE]"),
        Call::Anthropic { stream: true } => sse_data(&body)
            .last()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
            .is_some_and(|v| v["type"] == "message_stop"),
        Call::OpenAi { stream: false } => serde_json::from_str::<Value>(&body)
            .is_ok_and(|v| v["choices"][0]["message"]["content"].is_string()),
        Call::Anthropic { stream: false } => {
            serde_json::from_str::<Value>(&body).is_ok_and(|v| v["content"][0]["text"].is_string())
        }
    }
}

/// Clients calling in a loop until `stop`, each with fresh request ids; returns the ids
/// whose answers arrived complete.
fn start_load(
    workers: usize,
    port: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    completed: Arc<Mutex<HashSet<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let kinds = [
        Call::OpenAi { stream: true },
        Call::OpenAi { stream: false },
        Call::Anthropic { stream: true },
        Call::Anthropic { stream: false },
    ];
    (0..workers)
        .map(|w| {
            let (port, stop, completed) = (port.clone(), stop.clone(), completed.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("dur-{w}-{n}");
                    let kind = kinds[(w + n) % kinds.len()];
                    n += 1;
                    if call(&client, port.load(Ordering::Relaxed), &id, kind).await {
                        completed.lock().unwrap().insert(id);
                    } else {
                        // The proxy is down or restarting: do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_no_served_call_and_duplicates_none() {
    // A provider slow enough that a kill often lands mid-answer.
    let upstream = start_sim_with(SimOptions {
        first_token_delay: Duration::from_millis(15),
        token_interval: Duration::from_millis(3),
    })
    .await;
    let ch = ClickHouse::shared().await;
    let db = ch
        .fresh_database("sigkill_at_random_moments_loses_no_served_call")
        .await;
    // An fsync interval far longer than the test: what survives a kill is what reached the
    // operating system, not what reached the disk.
    let extra = telemetry(&ch.url, &db, "");
    let config = config_for(upstream.addr, &extra).replace(
        "flush_interval_ms: 5",
        "flush_interval_ms: 600000\n  shipped_retention_secs: 3600",
    );
    let mut proxy = Proxy::start(&config).await;

    let port = Arc::new(AtomicU16::new(proxy.port));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(Mutex::new(HashSet::new()));
    let load = start_load(12, port.clone(), stop.clone(), completed.clone());

    let mut rng = rand::rng();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        proxy.kill9();
        proxy.restart().await;
        port.store(proxy.port, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let completed = completed.lock().unwrap().clone();
    assert!(
        completed.len() > 100,
        "the load completed only {} calls",
        completed.len()
    );

    let mut per_id: HashMap<String, usize> = HashMap::new();
    let requests =
        tollgate::ledger::read_all::<tollgate::record::Record>(&proxy.ledger_dir()).unwrap();
    for r in &requests {
        *per_id.entry(r.request_id.clone()).or_default() += 1;
    }
    // A request record is written after its attempts: each one's calls are all there.
    let attempts_dir = tollgate::ledger::Stream::Attempts.dir(&proxy.ledger_dir());
    let mut calls: HashMap<String, u16> = HashMap::new();
    for a in tollgate::ledger::read_all::<tollgate::record::AttemptRecord>(&attempts_dir).unwrap() {
        *calls.entry(a.request_id).or_default() += 1;
    }
    let short: Vec<_> = requests
        .iter()
        .filter(|r| calls.get(&r.request_id).copied().unwrap_or(0) < r.attempts)
        .map(|r| &r.request_id)
        .collect();
    assert!(
        short.is_empty(),
        "requests missing attempt records: {short:?}"
    );
    let missing: Vec<_> = completed
        .iter()
        .filter(|id| !per_id.contains_key(*id))
        .collect();
    let doubled: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} of {} completed calls have no record, e.g. {:?}",
        missing.len(),
        completed.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(doubled.is_empty(), "records written twice: {doubled:?}");

    // Every ledger record reaches ClickHouse exactly once, through the kills too.
    let want = per_id.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (rows, ids) = loop {
        let r = ch
            .rows(&format!(
                "SELECT count() AS c, uniqExact(request_id) AS u FROM {db}.requests"
            ))
            .await;
        let got = (
            r.first().and_then(|r| r["c"].as_u64()).unwrap_or(0),
            r.first().and_then(|r| r["u"].as_u64()).unwrap_or(0),
        );
        if got.0 >= want || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (rows, ids),
        (want, want),
        "ClickHouse rows and distinct ids against the ledger's records:\n{}",
        proxy.log()
    );
    let in_ch: HashSet<String> = ch
        .rows(&format!("SELECT request_id FROM {db}.requests"))
        .await
        .into_iter()
        .filter_map(|r| r["request_id"].as_str().map(str::to_string))
        .collect();
    assert!(completed.is_subset(&in_ch));
}
