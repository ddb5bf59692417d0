//! TLS to the provider, trusting a private CA named in config: hosts by DNS name and by IP
//! address, each checked against the certificate's names.

use crate::common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{NameType, Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::{Value, json};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

/// The one name a leaf certificate carries in its subjectAltName.
enum San {
    Dns(&'static str),
    Ip(&'static str),
}

fn cert(cn: &str, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>, San)>) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match issuer {
        None => {
            b.set_issuer_name(&name).unwrap();
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.append_extension(KeyUsage::new().key_cert_sign().crl_sign().build().unwrap())
                .unwrap();
            b.sign(key, MessageDigest::sha256()).unwrap();
        }
        Some((ca, ca_key, san)) => {
            b.set_issuer_name(ca.subject_name()).unwrap();
            let mut names = SubjectAlternativeName::new();
            match san {
                San::Dns(dns) => names.dns(dns),
                San::Ip(ip) => names.ip(ip),
            };
            let san = names.build(&b.x509v3_context(Some(ca), None)).unwrap();
            b.append_extension(san).unwrap();
            b.sign(ca_key, MessageDigest::sha256()).unwrap();
        }
    }
    b.build()
}

/// A TLS upstream on 127.0.0.1 whose certificate carries only `san`, signed by a fresh
/// private CA, relaying to the plain simulated provider.
struct TlsUpstream {
    port: u16,
    ca_pem: Vec<u8>,
    /// The SNI of each handshake that completed.
    sni: Arc<Mutex<Vec<Option<String>>>>,
    /// Bytes of request the proxy sent after the handshake, over all connections.
    request_bytes: Arc<Mutex<u64>>,
    _sim: Upstream,
}

async fn tls_upstream(san: San) -> TlsUpstream {
    let sim = start_sim().await;
    let ca_key = key();
    let ca = cert("Tollgate Test CA", &ca_key, None);
    let leaf_key = key();
    // The subject names no host: only the subjectAltName can match.
    let leaf = cert("test upstream", &leaf_key, Some((&ca, &ca_key, san)));

    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acc.set_certificate(&leaf).unwrap();
    acc.set_private_key(&leaf_key).unwrap();
    let acc = acc.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sni: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let request_bytes = Arc::new(Mutex::new(0));
    let (seen, counted) = (Arc::clone(&sni), Arc::clone(&request_bytes));
    let backend = sim.addr;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let ssl = Ssl::new(acc.context()).unwrap();
            let (seen, counted) = (Arc::clone(&seen), Arc::clone(&counted));
            tokio::spawn(async move {
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if Pin::new(&mut tls).accept().await.is_err() {
                    return;
                }
                let name = tls.ssl().servername(NameType::HOST_NAME).map(String::from);
                seen.lock().unwrap().push(name);
                let back = tokio::net::TcpStream::connect(backend).await.unwrap();
                let (mut back_r, mut back_w) = back.into_split();
                let (mut tls_r, mut tls_w) = tokio::io::split(tls);
                // Counted as read, so bytes sent before a reset count too.
                let to_backend = async {
                    let mut buf = vec![0; 16 * 1024];
                    while let Ok(n @ 1..) = tls_r.read(&mut buf).await {
                        *counted.lock().unwrap() += n as u64;
                        if back_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = back_w.shutdown().await;
                };
                let to_client = async {
                    let _ = tokio::io::copy(&mut back_r, &mut tls_w).await;
                    let _ = tls_w.shutdown().await;
                };
                tokio::join!(to_backend, to_client);
            });
        }
    });
    TlsUpstream {
        port,
        ca_pem: ca.to_pem().unwrap(),
        sni,
        request_bytes,
        _sim: sim,
    }
}

fn tls_config(base_url: &str, ca_file: Option<&str>) -> String {
    let ca = ca_file
        .map(|f| format!("    ca_file: {f}\n"))
        .unwrap_or_default();
    format!(
        "builtin_prices: false\nprices: [prices.yaml]\nledger: {{ flush_interval_ms: 5 }}\nserver: {{ grace_period_secs: 0 }}\n\
providers:\n  openai:\n    kind: openai_compatible\n    base_url: {base_url}\n    api_key_env: TEST_OPENAI_KEY\n{ca}\
models:\n  gpt-4o-mini: {{ provider: openai }}\nkeys:\n  - name: k\n    key_env: TEST_VKEY_SEARCH\n"
    )
}

/// A proxy in front of `up` at `host`, trusting its private CA.
async fn proxy_trusting(up: &TlsUpstream, host: &str) -> Proxy {
    let base_url = format!("https://{host}:{}", up.port);
    Proxy::start_with(
        &tls_config(&base_url, Some("ca.pem")),
        &[("ca.pem", &up.ca_pem)],
    )
    .await
}

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

/// One call through `proxy` that the upstream must answer: 200, metered and recorded.
async fn assert_proxied(proxy: &Proxy) {
    let headers = [("x-sim-output-tokens", "3")];
    let resp = openai(proxy, "/v1/chat/completions", &headers, &chat()).await;
    assert_eq!(resp.status(), 200, "{}", proxy.log());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let record = proxy.only_record().await;
    assert_eq!((record.status, record.output_tokens), (200, 3));
}

/// One call through `proxy` that must be refused before anything reaches the upstream: a 502
/// in OpenAI's error format, recorded.
async fn assert_refused(proxy: &Proxy, up: &TlsUpstream) {
    let resp = openai(proxy, "/v1/chat/completions", &[], &chat()).await;
    assert_eq!(resp.status(), 502, "{}", proxy.log());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("openai"), "{v}");
    // The client is told why, not just that a write failed.
    assert!(
        message.contains("certificate does not name 127.0.0.1"),
        "{v}"
    );
    let record = proxy.only_record().await;
    assert_eq!((record.status, record.cost_usd.unwrap().0), (502, 0));
    // Not a byte of the request, and so not the provider key, went to that server.
    assert_eq!(*up.request_bytes.lock().unwrap(), 0);
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let up = tls_upstream(San::Dns("localhost")).await;

    // Trusting the private CA: the call goes through and is metered, with the host as SNI.
    let trusted = proxy_trusting(&up, "localhost").await;
    assert_proxied(&trusted).await;
    assert_eq!(*up.sni.lock().unwrap(), [Some("localhost".to_string())]);

    // Without it the certificate is rejected: 502, not a silent plaintext fallback.
    let base_url = format!("https://localhost:{}", up.port);
    let untrusted = Proxy::start(&tls_config(&base_url, None)).await;
    let resp = openai(&untrusted, "/v1/chat/completions", &[], &chat()).await;
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn an_upstream_addressed_by_ip_is_verified_against_its_ip_san() {
    let up = tls_upstream(San::Ip("127.0.0.1")).await;
    let proxy = proxy_trusting(&up, "127.0.0.1").await;
    assert_proxied(&proxy).await;
    // RFC 6066: an IP literal is never sent as SNI.
    assert_eq!(*up.sni.lock().unwrap(), [None]);
}

#[tokio::test]
async fn a_certificate_that_does_not_name_the_ip_is_refused() {
    // Signed by the trusted CA, but for a DNS name only.
    let dns_only = tls_upstream(San::Dns("upstream.test")).await;
    let proxy = proxy_trusting(&dns_only, "127.0.0.1").await;
    assert_refused(&proxy, &dns_only).await;

    // Signed by the trusted CA, for another address.
    let other_ip = tls_upstream(San::Ip("127.0.0.2")).await;
    let proxy = proxy_trusting(&other_ip, "127.0.0.1").await;
    assert_refused(&proxy, &other_ip).await;
}
