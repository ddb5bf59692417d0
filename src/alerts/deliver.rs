//! One alert to one webhook: a POST, retried with exponential backoff.
//!
//! Connection errors, timeouts, 5xx and 429 are retried (429 and 503 after their
//! `Retry-After` when it says seconds, within the cap); any other answer is final. Redirects
//! are not followed: they would carry the body and its signature elsewhere. Logs name the
//! webhook, never its URL (it holds the webhook's credentials).

use super::Alert;
use super::message::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::config::{Webhook, WebhookFormat};
use http::StatusCode;
use std::time::Duration;

/// How a delivery is retried.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Wait after the first failure; doubled after each next one, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// One try's limit, connection included.
    pub timeout: Duration,
}

impl Default for Retry {
    /// 5 tries over about 15 s (waits of 1, 2, 4 and 8 s), 10 s each.
    fn default() -> Self {
        Retry {
            attempts: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Retry {
    fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Why one try failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Never holds the URL (`reqwest::Error::without_url`).
    #[error("{0}")]
    Transport(reqwest::Error),
    #[error("answered {status}{}", detail(.body))]
    Status {
        status: StatusCode,
        body: String,
        retry_after: Option<Duration>,
    },
}

fn detail(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            // A request that could not even be built (a bad URL) fails the same way again.
            Failure::Transport(e) => !e.is_builder(),
            Failure::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

/// Delivers `alert` (named `id`) to `hook`; true once the webhook accepted it (2xx), false
/// when it was given up.
pub async fn deliver(
    client: &reqwest::Client,
    hook: &Webhook,
    id: &str,
    alert: &Alert,
    retry: &Retry,
) -> bool {
    let body = match &hook.format {
        WebhookFormat::Slack => message::slack_body(alert),
        WebhookFormat::Json { .. } => message::json_body(id, alert),
    };
    let attempts = retry.attempts.max(1);
    for attempt in 1..=attempts {
        let failure = match post(client, hook, body.clone(), retry.timeout).await {
            Ok(()) => return true,
            Err(f) => f,
        };
        let again = failure.retryable() && attempt < attempts;
        if !again {
            tracing::error!(webhook = %hook.name, budget = %alert.budget, alert_id = id, attempt, error = %failure, "alert not delivered; giving up");
            return false;
        }
        let mut wait = retry.delay(attempt);
        if let Failure::Status {
            retry_after: Some(after),
            ..
        } = failure
        {
            wait = after.min(retry.max_delay);
        }
        tracing::warn!(webhook = %hook.name, budget = %alert.budget, alert_id = id, attempt, error = %failure, retry_in = ?wait, "alert delivery failed; retrying");
        tokio::time::sleep(wait).await;
    }
    unreachable!("the last attempt returns")
}

async fn post(
    client: &reqwest::Client,
    hook: &Webhook,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut req = client
        .post(&hook.url)
        .timeout(timeout)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let WebhookFormat::Json { secret } = &hook.format {
        // Signed at each try, so the timestamp says when this one was sent.
        let ts = chrono::Utc::now().timestamp();
        req = req.header(TIMESTAMP_HEADER, ts.to_string()).header(
            SIGNATURE_HEADER,
            message::signature(secret.as_bytes(), ts, &body),
        );
    }
    let resp = req
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Transport(e.without_url()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // A short excerpt of the answer says why (Slack answers `invalid_token`, `no_text`...).
    let body = resp.text().await.unwrap_or_default();
    let body: String = body
        .chars()
        .take(120)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Err(Failure::Status {
        status,
        body: body.trim().to_string(),
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let r = Retry {
            attempts: 10,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        };
        let waits: Vec<u64> = (1..=5).map(|n| r.delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(r.delay(200), Duration::from_secs(5), "no overflow");
    }
}
