//! Reaching a provider: address resolution, the pingora peer, and the request header.

use crate::api::ApiFormat;
use crate::attribution::is_tollgate_header;
use crate::config::{Provider, UpstreamAddr};
use crate::error::ProxyError;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::tls::ssl::SslRef;
use pingora::tls::ssl_sys;
use pingora::tls::x509::X509Ref;
use pingora::upstreams::peer::HttpPeer;
use std::any::Any;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a resolved address is reused.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Resolves provider hosts off the blocking path (pingora's `HttpPeer::new` would resolve
/// with a blocking call that panics on failure), caching answers briefly.
#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), (Instant, SocketAddr)>>,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        if let Some((at, addr)) = self.cache.lock().ok().and_then(|c| c.get(&key).copied())
            && at.elapsed() < DNS_TTL
        {
            return Ok(addr);
        }
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, (Instant::now(), addr));
        }
        Ok(addr)
    }
}

/// The pingora peer for a provider, with its timeouts and trusted CAs.
pub async fn peer(
    resolver: &Resolver,
    provider: &Provider,
    addr: &UpstreamAddr,
) -> Result<HttpPeer, ProxyError> {
    let sock = resolver
        .resolve(&addr.host, addr.port)
        .await
        .map_err(|reason| ProxyError::Upstream {
            provider: provider.name.clone(),
            reason,
        })?;
    let mut peer = HttpPeer::new(sock, addr.tls, addr.host.clone());
    peer.options.connection_timeout = Some(provider.connect_timeout);
    peer.options.read_timeout = Some(provider.read_timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    if let Some(pem) = &provider.ca_pem {
        let certs = pingora::tls::x509::X509::stack_from_pem(pem).map_err(|e| {
            ProxyError::Internal(format!("provider {} CA file: {e}", provider.name))
        })?;
        peer.options.ca = Some(Arc::new(certs.into_boxed_slice()));
    }
    // Pingora checks the certificate against the host as a DNS name only, which an IP address
    // SAN never matches. For an IP host it still verifies the chain, and the name is checked
    // here once the handshake is done: a certificate that does not name the address gets its
    // session shut before a byte of request, key included, is written. (No SNI is sent for an
    // IP literal, as RFC 6066 requires.)
    let host = addr.host.trim_start_matches('[').trim_end_matches(']');
    if addr.tls
        && let Ok(ip) = host.parse::<IpAddr>()
    {
        peer.options.verify_hostname = false;
        let provider = provider.name.clone();
        peer.options.upstream_tls_handshake_complete_hook = Some(Arc::new(move |ssl: &SslRef| {
            if !ssl.peer_certificate().is_some_and(|c| names_ip(&c, ip)) {
                tracing::warn!(%provider, %ip, "upstream certificate does not name its IP address");
                // SAFETY: an `&SslRef` is the address of the live `SSL` (openssl's foreign
                // type references), used by this task alone during this call. Marked shut
                // down, the session fails every later write without sending anything.
                unsafe {
                    ssl_sys::SSL_set_shutdown(
                        std::ptr::from_ref(ssl).cast_mut().cast(),
                        ssl_sys::SSL_SENT_SHUTDOWN | ssl_sys::SSL_RECEIVED_SHUTDOWN,
                    );
                }
                // Left in the connection's TLS digest, so the failed write can say why.
                return Some(Arc::new(CertificateMissesIp(ip)) as Arc<dyn Any + Send + Sync>);
            }
            None
        }));
    }
    Ok(peer)
}

/// The upstream's certificate does not name the IP address it was reached at.
pub struct CertificateMissesIp(pub IpAddr);

/// Why writing to `up` failed, when its certificate was refused after the handshake.
pub fn refused_certificate(up: &HttpSession) -> Option<String> {
    let ssl = up.digest()?.ssl_digest.as_ref()?;
    let CertificateMissesIp(ip) = ssl.extension.get::<CertificateMissesIp>()?;
    Some(format!("its TLS certificate does not name {ip}"))
}

/// Whether `cert` carries `ip` as an IP address SAN (as OpenSSL's `X509_check_ip` decides).
fn names_ip(cert: &X509Ref, ip: IpAddr) -> bool {
    let octets = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    cert.subject_alt_names()
        .is_some_and(|names| names.iter().any(|n| n.ipaddress() == Some(&octets[..])))
}

/// Request headers a proxy must not forward (RFC 9110 §7.6.1), plus ones Tollgate sets.
fn is_dropped_request_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "expect"
            // Responses are parsed for usage, so they must arrive uncompressed.
            | "accept-encoding"
            | "authorization"
            | "x-api-key"
    ) || is_tollgate_header(name)
}

/// The Messages API version sent when the client named none.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Which credential goes upstream.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// The provider's own key from config.
    Provider(&'a str),
    /// The client's key, passed through unchanged (its original headers are kept).
    Client,
}

/// Builds the upstream request header from the client's, for the client's path and query
/// unless `path` names another.
pub fn request_header(
    client: &RequestHeader,
    path_override: Option<&str>,
    addr: &UpstreamAddr,
    provider: &Provider,
    format: ApiFormat,
    credential: Credential<'_>,
    body_len: usize,
) -> Result<RequestHeader, ProxyError> {
    let path_and_query =
        path_override.unwrap_or_else(|| client.uri.path_and_query().map_or("/", |p| p.as_str()));
    let path = format!("{}{}", addr.path_prefix, path_and_query);
    let mut req = RequestHeader::build(
        client.method.clone(),
        path.as_bytes(),
        Some(client.headers.len() + 3),
    )
    .map_err(|e| ProxyError::Internal(format!("building upstream request: {e}")))?;
    let internal = |e: pingora::BError| ProxyError::Internal(format!("upstream header: {e}"));
    for (name, value) in client.headers.iter() {
        let keep_client_auth = matches!(credential, Credential::Client)
            && (name == http::header::AUTHORIZATION || name.as_str() == "x-api-key");
        if keep_client_auth || !is_dropped_request_header(name.as_str()) {
            req.append_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
    }
    let host = if (addr.tls && addr.port == 443) || (!addr.tls && addr.port == 80) {
        addr.host.clone()
    } else {
        format!("{}:{}", addr.host, addr.port)
    };
    req.insert_header(http::header::HOST, host)
        .map_err(internal)?;
    req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
        .map_err(internal)?;
    if path_override.is_some()
        && format == ApiFormat::Anthropic
        && !req.headers.contains_key("anthropic-version")
    {
        // A judge's call to Anthropic for a client that spoke OpenAI.
        req.insert_header("anthropic-version", ANTHROPIC_VERSION)
            .map_err(internal)?;
    }
    if let Credential::Provider(key) = credential {
        if provider.kind.sends_anthropic_headers(format) {
            req.insert_header("x-api-key", key).map_err(internal)?;
        } else {
            req.insert_header(http::header::AUTHORIZATION, format!("Bearer {key}"))
                .map_err(internal)?;
        }
    }
    Ok(req)
}
