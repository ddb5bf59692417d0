//! TLS to the provider, trusting a private CA named in config.

mod common;

use common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::{Value, json};
use std::pin::Pin;

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn cert(cn: &str, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> X509 {
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
        Some((ca, ca_key)) => {
            b.set_issuer_name(ca.subject_name()).unwrap();
            let san = SubjectAlternativeName::new()
                .dns("localhost")
                .build(&b.x509v3_context(Some(ca), None))
                .unwrap();
            b.append_extension(san).unwrap();
            b.sign(ca_key, MessageDigest::sha256()).unwrap();
        }
    }
    b.build()
}

/// Terminates TLS with `leaf` and relays bytes to the plain simulated provider.
async fn tls_front(leaf: X509, leaf_key: PKey<Private>, backend: std::net::SocketAddr) -> u16 {
    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acc.set_certificate(&leaf).unwrap();
    acc.set_private_key(&leaf_key).unwrap();
    let acc = acc.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let ssl = Ssl::new(acc.context()).unwrap();
            tokio::spawn(async move {
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if Pin::new(&mut tls).accept().await.is_err() {
                    return;
                }
                let mut back = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
            });
        }
    });
    port
}

fn tls_config(port: u16, ca_file: Option<&str>) -> String {
    let ca = ca_file
        .map(|f| format!("    ca_file: {f}\n"))
        .unwrap_or_default();
    format!(
        "builtin_prices: false\nprices: [prices.yaml]\nledger: {{ flush_interval_ms: 5 }}\nserver: {{ grace_period_secs: 0 }}\n\
providers:\n  openai:\n    kind: openai_compatible\n    base_url: https://localhost:{port}\n    api_key_env: TEST_OPENAI_KEY\n{ca}\
models:\n  gpt-4o-mini: {{ provider: openai }}\nkeys:\n  - name: k\n    key_env: TEST_VKEY_SEARCH\n"
    )
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let up = start_sim().await;
    let ca_key = key();
    let ca = cert("Tollgate Test CA", &ca_key, None);
    let leaf_key = key();
    let leaf = cert("localhost", &leaf_key, Some((&ca, &ca_key)));
    let port = tls_front(leaf, leaf_key, up.addr).await;
    let ca_pem = ca.to_pem().unwrap();

    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});

    // Trusting the private CA: the call goes through and is metered.
    let trusted =
        Proxy::start_with(&tls_config(port, Some("ca.pem")), &[("ca.pem", &ca_pem)]).await;
    let resp = openai(
        &trusted,
        "/v1/chat/completions",
        &[("x-sim-output-tokens", "3")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", trusted.log());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(trusted.only_record().await.output_tokens, 3);

    // Without it the certificate is rejected: 502, not a silent plaintext fallback.
    let untrusted = Proxy::start(&tls_config(port, None)).await;
    let resp = openai(&untrusted, "/v1/chat/completions", &[], &body).await;
    assert_eq!(resp.status(), 502);
}
