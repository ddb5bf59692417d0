//! Admission: the path, the key, the attribution and the body, read and checked before
//! anything is planned or sent.

use super::{RequestCtx, Tollgate, body, upstream};
use crate::api::{Endpoint, MAX_NAME_LEN};
use crate::attribution::Attribution;
use crate::auth::{Presented, presented_key};
use crate::config::Provider;
use crate::error::ProxyError;
use crate::tokens::Encoding;
use crate::usage::estimate;
use bytes::Bytes;
use pingora::proxy::Session;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::time::Duration;

/// Longest path accepted; the path is recorded as `endpoint`.
const MAX_PATH_LEN: usize = 2048;

/// A request that passed admission, with what planning needs to know of its body.
pub struct Admitted {
    pub endpoint: Endpoint,
    pub body: Bytes,
    /// A POST to a metered endpoint: its answer is metered and recorded with usage.
    pub metered: bool,
    /// The model asked for, on endpoints that name one.
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: Option<bool>,
    /// Tools were offered.
    pub tools: bool,
    /// JSON mode or a JSON schema was asked for.
    pub json: bool,
    /// The client asked for token logprobs.
    pub logprobs: bool,
    /// The client's limit on output tokens (`max_tokens`, `max_completion_tokens`,
    /// `max_output_tokens`: the smallest given).
    pub max_output: Option<u64>,
    /// The input tokens, once counted (see [`Admitted::estimated_input_tokens`]).
    input_tokens: std::sync::OnceLock<u64>,
    /// The client presented one of Tollgate's virtual keys (else its own provider key).
    virtual_key: bool,
}

/// The fields of a request body that routing needs; the rest is validated, not kept.
/// Fields only rules and judges look at are taken raw and read leniently: their shapes
/// differ between endpoints (legacy completions' `logprobs` is a number), and a shape this
/// proxy does not expect must not turn a valid request into a 400.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    logprobs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response_format: Option<&'a RawValue>,
    /// The Responses API's `text.format`.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TextOptions<'a> {
    #[serde(borrow, default)]
    format: Option<TypeOnly<'a>>,
}

impl TypeOnly<'_> {
    fn is_json(&self) -> bool {
        matches!(self.kind.as_deref(), Some("json_object" | "json_schema"))
    }
}

/// Whether a `response_format` asks for JSON.
fn asks_json(format: &str) -> bool {
    serde_json::from_str::<TypeOnly>(format).is_ok_and(|f| f.is_json())
}

/// Checks the path and the key, resolves the attribution and reads the body.
pub async fn admit(
    tg: &Tollgate,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Admitted, ProxyError> {
    let cfg = ctx.config.clone();
    let path = session.req_header().uri.path().to_string();
    if path.len() > MAX_PATH_LEN {
        return Err(ProxyError::BadRequest(format!(
            "the path is longer than {MAX_PATH_LEN} bytes"
        )));
    }
    let endpoint = Endpoint::from_path(&path).ok_or_else(|| ProxyError::NotFound(path.clone()))?;
    ctx.format = endpoint.format(&session.req_header().headers);
    ctx.endpoint = path;
    ctx.recorded = true;

    let presented = match presented_key(&session.req_header().headers) {
        None => return Err(ProxyError::MissingKey),
        Some(Presented::Unreadable) => return Err(ProxyError::UnknownKey),
        Some(Presented::Key(k)) => k.to_string(),
    };
    let vkey = cfg.keys.find(&presented);
    let any_client_keys = cfg.providers.values().any(|p| p.allow_client_keys);
    if vkey.is_none() && !any_client_keys {
        return Err(ProxyError::UnknownKey);
    }
    ctx.attribution = Attribution::resolve(&session.req_header().headers, vkey, &cfg.attribution);

    let body_deadline = Duration::from_millis(cfg.server.body_timeout_ms);
    let body = body::read(session, cfg.max_body_bytes, body_deadline)
        .await
        .inspect_err(|e| {
            if matches!(e, ProxyError::BodyTimeout { .. }) {
                tg.metrics
                    .client_timeouts
                    .with_label_values(&["body"])
                    .inc();
            }
        })?;
    let is_post = session.req_header().method == http::Method::POST;
    let mut admitted = Admitted {
        endpoint,
        metered: endpoint.is_metered() && is_post,
        model: None,
        stream: false,
        include_usage: None,
        tools: false,
        json: false,
        logprobs: false,
        max_output: None,
        input_tokens: std::sync::OnceLock::new(),
        virtual_key: vkey.is_some(),
        body,
    };
    if endpoint.has_model() && is_post {
        let peek: Peek = serde_json::from_slice(&admitted.body)
            .map_err(|e| ProxyError::BadJson(e.to_string()))?;
        let model = peek
            .model
            .as_deref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ProxyError::BadRequest("`model` is required".into()))?;
        if model.len() > MAX_NAME_LEN || model.chars().any(char::is_control) {
            return Err(ProxyError::BadRequest(format!(
                "`model` must be at most {MAX_NAME_LEN} bytes of printable text"
            )));
        }
        ctx.requested_model = model.to_string();
        admitted.model = Some(model.to_string());
        admitted.stream = peek.stream.unwrap_or(false);
        admitted.include_usage = peek.stream_options.and_then(|o| o.include_usage);
        admitted.tools = peek.tools.is_some_and(|t| {
            serde_json::from_str::<Vec<IgnoredAny>>(t.get()).is_ok_and(|v| !v.is_empty())
        });
        admitted.logprobs = peek.logprobs.is_some_and(|l| l.get() == "true");
        admitted.max_output = [
            peek.max_tokens,
            peek.max_completion_tokens,
            peek.max_output_tokens,
        ]
        .into_iter()
        .flatten()
        .filter_map(|v| v.get().parse::<u64>().ok())
        .min();
        admitted.json = peek.response_format.is_some_and(|f| asks_json(f.get()))
            || peek.text.is_some_and(|t| {
                serde_json::from_str::<TextOptions>(t.get())
                    .ok()
                    .and_then(|t| t.format)
                    .is_some_and(|f| f.is_json())
            });
    }
    ctx.stream = admitted.stream;
    Ok(admitted)
}

/// Bodies up to this size are counted on the async worker, larger ones on the counting
/// threads (`tokens::spawn_count`), so a huge prompt holds up no other request.
const COUNT_INLINE_BYTES: usize = 64 * 1024;

fn count_input(endpoint: Endpoint, body: &[u8], model: Option<&str>) -> u64 {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    let enc = Encoding::for_model(model.unwrap_or_default());
    estimate::input_count(endpoint, &value, enc).tokens
}

impl Admitted {
    /// The request's input tokens, counted locally (for rules that match on its size).
    /// Counted once per request, however many steps ask.
    pub fn estimated_input_tokens(&self) -> u64 {
        *self
            .input_tokens
            .get_or_init(|| count_input(self.endpoint, &self.body, self.model.as_deref()))
    }

    /// [`Admitted::estimated_input_tokens`], counted off the async workers when the body is
    /// large enough for counting to take a while.
    pub async fn counted_input_tokens(&self) -> u64 {
        if let Some(n) = self.input_tokens.get() {
            return *n;
        }
        if self.body.len() < COUNT_INLINE_BYTES {
            Encoding::for_model(self.model.as_deref().unwrap_or_default())
                .load()
                .await;
            return self.estimated_input_tokens();
        }
        let (endpoint, body, model) = (self.endpoint, self.body.clone(), self.model.clone());
        let n = crate::tokens::spawn_count(move || count_input(endpoint, &body, model.as_deref()))
            .await;
        *self.input_tokens.get_or_init(|| n)
    }

    /// The credential sent to `provider`: its own key for virtual-key clients, the
    /// client's key where the provider lets clients bring their own.
    pub fn credential<'p>(
        &self,
        provider: &'p Provider,
    ) -> Result<upstream::Credential<'p>, ProxyError> {
        match (self.virtual_key, &provider.api_key) {
            (true, Some(key)) => Ok(upstream::Credential::Provider(key)),
            // The simulated provider needs some credential, not a real one.
            (true, None) if !provider.kind.needs_real_credential() => {
                Ok(upstream::Credential::Provider("simulated"))
            }
            (false, _) if provider.allow_client_keys => Ok(upstream::Credential::Client),
            (false, _) => Err(ProxyError::UnknownKey),
            (true, None) => Err(ProxyError::Internal(format!(
                "provider {} has no api_key_env and does not allow client keys",
                provider.name
            ))),
        }
    }
}
