//! The demo's budget alert webhook: a receiver on loopback that checks each post's signature
//! the way a production receiver would, keeps the alerts, and prints them as a person
//! reading the channel would see them.

use crate::alerts::message::signature;
use crate::alerts::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Where the child proxy reads the webhook's signing secret from.
pub const SECRET_ENV: &str = "TOLLGATE_DEMO_WEBHOOK_SECRET";

#[derive(Default)]
struct Inbox {
    alerts: Vec<Value>,
    /// Posts refused for a missing or wrong signature.
    refused: usize,
}

/// The running receiver; it stops with the runtime it was started on.
pub struct Receiver {
    pub addr: SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a port of its own) for alerts signed with `secret`.
    pub async fn start(secret: String) -> std::io::Result<Receiver> {
        let inbox: Arc<Mutex<Inbox>> = Arc::default();
        let store = inbox.clone();
        let app =
            axum::Router::new().fallback(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let (store, secret) = (store.clone(), secret.clone());
                async move {
                    let mut inbox = store.lock().unwrap_or_else(|e| e.into_inner());
                    match signed(&headers, &body, secret.as_bytes())
                        .then(|| serde_json::from_slice::<Value>(&body).ok())
                        .flatten()
                    {
                        Some(alert) => {
                            inbox.alerts.push(alert);
                            http::StatusCode::NO_CONTENT
                        }
                        None => {
                            inbox.refused += 1;
                            http::StatusCode::UNAUTHORIZED
                        }
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("demo webhook stopped: {e}");
            }
        });
        Ok(Receiver { addr, inbox })
    }

    /// Waits up to `deadline` until `budget`'s threshold alerts for each of `percents`
    /// have arrived; true when they all did.
    pub async fn wait_for(&self, budget: &str, percents: &[u32], deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let have = {
                let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
                percents.iter().all(|p| {
                    inbox.alerts.iter().any(|a| {
                        a["budget"] == budget
                            && a["kind"] == "threshold"
                            && a["percent"].as_u64() == Some(u64::from(*p))
                    })
                })
            };
            if have {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Prints the alerts received, in the order the budget noticed them.
    pub fn print(&self) {
        let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let mut alerts: Vec<&Value> = inbox.alerts.iter().collect();
        alerts.sort_by_key(|a| {
            (
                a["at"].as_str().unwrap_or_default().to_string(),
                a["percent"].as_u64(),
            )
        });
        println!(
            "Budget alerts received by the demo's webhook ({} signed JSON posts, signatures checked{}); each one's fields, then its text:",
            alerts.len(),
            match inbox.refused {
                0 => String::new(),
                n => format!("; {n} refused for a bad signature"),
            }
        );
        if alerts.is_empty() {
            println!("  none");
        }
        for a in alerts {
            println!("  {}", headline(a));
            for line in a["text"].as_str().unwrap_or_default().lines() {
                println!("    {line}");
            }
        }
    }
}

/// Whether `body` carries a valid signature of `secret` (compared in constant time).
fn signed(headers: &http::HeaderMap, body: &[u8], secret: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER)) else {
        return false;
    };
    let Ok(ts) = ts.parse::<i64>() else {
        return false;
    };
    signature(secret, ts, body)
        .as_bytes()
        .ct_eq(sig.as_bytes())
        .into()
}

/// The payload's fields on one line, as `name=value`: its kind, then what it says.
fn headline(a: &Value) -> String {
    let kind = a["kind"].as_str().unwrap_or("?");
    let what: &[&str] = if kind == "threshold" {
        &["percent"]
    } else {
        &["projected_usd", "limit_reached_on"]
    };
    let fields = ["budget"]
        .iter()
        .chain(what)
        .chain(&["spend_usd", "limit_usd", "resets_at"])
        .map(|f| match &a[*f] {
            Value::String(v) => format!("{f}={v}"),
            v => format!("{f}={v}"),
        })
        .collect::<Vec<_>>();
    format!("{kind:<9}  {}", fields.join(" "))
}
