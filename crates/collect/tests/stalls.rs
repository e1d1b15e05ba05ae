//! Nothing ordinary stalls the pipeline or loses a response: the schema registry down or
//! answering 500 while a connector restarts holds the batch (no dead letter, nothing skipped)
//! and every response arrives once the registry is back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use common::providers::{SECRET, named_form_with_sheet};
use common::{Proc, metric, reader};
use serde_json::{Value, json};

/// A registry in front of the real one: answers 500 (mode 1), refuses nothing but forwards
/// (mode 0). Counts the 500s it gave.
#[derive(Clone)]
struct Flaky {
    real: String,
    mode: Arc<AtomicU8>,
    failed: Arc<AtomicU64>,
}

async fn flaky(State(f): State<Flaky>, req: Request) -> axum::response::Response {
    if f.mode.load(Ordering::SeqCst) == 1 {
        f.failed.fetch_add(1, Ordering::SeqCst);
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error_code": 50001, "message": "Error in the backend datastore"})),
        )
            .into_response();
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let r = reqwest::Client::new()
        .get(format!("{}{path}", f.real))
        .send()
        .await
        .unwrap();
    let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
    let body = r.bytes().await.unwrap();
    (
        status,
        [("content-type", "application/vnd.schemaregistry.v1+json")],
        body,
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_answering_500_while_the_connector_restarts_holds_the_batch() {
    let (e, brokers, google, gs) = named_form_with_sheet("Sign-up").await;
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(e.submit(json!({"name": format!("r{i}")})).await);
    }

    let f = Flaky {
        real: e.registry.clone(),
        mode: Arc::new(AtomicU8::new(1)),
        failed: Arc::new(AtomicU64::new(0)),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", l.local_addr().unwrap());
    let app = axum::Router::new().fallback(flaky).with_state(f.clone());
    tokio::spawn(async move { axum::serve(l, app).await });
    let start = || {
        let mut vars = e.process_env(&brokers);
        vars.retain(|(k, _)| k != "COLLECT_REGISTRY_URL");
        vars.push(("COLLECT_REGISTRY_URL".into(), registry.clone()));
        vars.push(("COLLECT_SECRET_KEY".into(), SECRET.into()));
        Proc::start(
            &["connect", "--poll-ms", "300", "--batch-max-wait-ms", "200"],
            &vars,
            "COLLECT_CONNECT_LISTEN",
        )
    };
    let wait_failed = |at_least: u64| {
        let f = f.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while f.failed.load(Ordering::SeqCst) < at_least {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the connector never asked the registry"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut connect = start();
    connect.wait("/readyz", |_| true).await;
    let r = e
        .http
        .post(format!("{}/v1/integrations", connect.url()))
        .bearer_auth(&e.key)
        .json(&google.integration(&e, &gs))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_failed(2).await;
    // The connector restarts while the registry still fails.
    connect.kill9();
    let before = f.failed.load(Ordering::SeqCst);
    connect = start();
    wait_failed(before + 2).await;
    let m = connect.metrics().await;
    assert_eq!(metric(&m, "collect_connect_dead_letters_total"), 0.0, "{m}");
    assert_eq!(metric(&m, "collect_connect_committed_total"), 0.0, "{m}");
    // Back: every response arrives, once, and nothing was dead-lettered.
    f.mode.store(0, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = google.values(&gs.token, &gs.spreadsheet).await;
        let ok = ids.iter().all(|id| {
            v.iter()
                .filter(|r| r.first().and_then(Value::as_str) == Some(id.as_str()))
                .count()
                == 1
        });
        if ok {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let m = connect.metrics().await;
    assert_eq!(metric(&m, "collect_connect_dead_letters_total"), 0.0, "{m}");
    connect.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_session_ended_from_postgres_mid_batch_leaves_every_response_in_one_row() {
    let (e, brokers, google, gs) = named_form_with_sheet("Sign-up").await;
    let cdc = reader(&e, &brokers);
    cdc.wait("/status", |v| v["state"] == "streaming").await;
    let connect = common::providers::connector(&e, &brokers);
    connect.wait("/readyz", |_| true).await;
    let r = e
        .http
        .post(format!("{}/v1/integrations", connect.url()))
        .bearer_auth(&e.key)
        .json(&google.integration(&e, &gs))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // Slow writes, so that batches are in flight when the session ends.
    google.faults(json!({"latency_ms": 300})).await;
    let load = common::providers::load(&e, "l", 150, Duration::from_millis(5));
    let sql = e.db.connect().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while google.values(&gs.token, &gs.spreadsheet).await.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended: i64 = sql
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'collect-connect-lease'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended >= 1, "no lease session to end");
    let ids = load.await.unwrap();
    google.faults(json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = google.values(&gs.token, &gs.spreadsheet).await;
        let per: Vec<usize> = ids
            .iter()
            .map(|id| {
                v.iter()
                    .filter(|r| r.first().and_then(Value::as_str) == Some(id.as_str()))
                    .count()
            })
            .collect();
        assert!(per.iter().all(|n| *n <= 1), "a response in two rows: {v:?}");
        if per.iter().all(|n| *n == 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{per:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The process takes the integration again on a new lease session, under a new lease
    // generation (within its next polls).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let generation: i64 = sql
            .query_one("SELECT max(lease_generation) FROM integrations", &[])
            .await
            .unwrap()
            .get(0);
        if generation >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease generation still {generation}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    connect.kill9();
}
