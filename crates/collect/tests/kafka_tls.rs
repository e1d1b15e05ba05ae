//! Kafka over TLS, with librdkafka settings from a properties file: a broker reachable only
//! through a TLS-terminating proxy (certificates of a CA the test makes), `collect cdc` given
//! `security.protocol=SSL` and the CA in `--kafka-options-file` (the environment's
//! `COLLECT_KAFKA_OPTIONS_FILE`), and the responses read back over TLS by a client that
//! trusts that CA. A missing options file stops the process at start, naming the file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use collect_testkit::Broker;
use collect_testkit::process::free_port;
use common::{Proc, env};
use rdkafka::message::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// Accepts TLS on `listen` and forwards the plaintext to the broker on `broker`.
async fn tls_proxy(listen: u16, broker: u16, certs: &collect_testkit::tls::Certificates) {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.path("server.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind(("127.0.0.1", listen))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", broker)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_produces_over_tls_with_settings_from_a_properties_file() {
    let certs = collect_testkit::tls::certificates().unwrap();
    let tls_port = free_port().unwrap();
    let broker = Broker::start_advertising(Some(tls_port)).await.unwrap();
    let broker_port: u16 = broker
        .bootstrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    tls_proxy(tls_port, broker_port, &certs).await;
    let brokers = format!("127.0.0.1:{tls_port}");

    let e = env(json!({"title": "Over TLS", "questions": [
        {"label": "Name", "type": "text", "alias": "name", "required": true}
    ]}))
    .await;
    let options = certs.dir().join("client.properties");
    std::fs::write(
        &options,
        format!(
            "# as Kafka's client.properties\nsecurity.protocol=SSL\nssl.ca.location={}\n",
            certs.path("ca.pem")
        ),
    )
    .unwrap();

    // A missing file: the process stops at start and says which file.
    let mut vars = e.process_env(&brokers);
    vars.push((
        "COLLECT_KAFKA_OPTIONS_FILE".into(),
        certs.path("absent.properties"),
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collect"))
        .args(["cdc", "--partitions", "3"])
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("COLLECT_CDC_METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absent.properties"), "{err}");

    let mut vars = e.process_env(&brokers);
    vars.push((
        "COLLECT_KAFKA_OPTIONS_FILE".into(),
        options.display().to_string(),
    ));
    let cdc = Proc::start(
        &["cdc", "--partitions", "3", "--heartbeat-secs", "1"],
        &vars,
        "COLLECT_CDC_METRICS_LISTEN",
    );
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let mut want = BTreeSet::new();
    for i in 0..5 {
        want.insert(e.submit(json!({"name": format!("tls-{i}")})).await);
    }

    // Read back over TLS, trusting the test's CA.
    let topic = e.topic("responses");
    let ca = certs.path("ca.pem");
    let consumer = common::from_beginning(
        &brokers,
        &topic,
        &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)],
    );
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 5 responses never reached {topic} over TLS",
            want.difference(&seen).count()
        );
        let got = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)));
        if let Some(Ok(m)) = got
            && let Some(k) = m.key()
        {
            seen.insert(String::from_utf8_lossy(k).into_owned());
        }
    }
}
