//! `collect cdc` as a real process, killed with SIGKILL during load, and the broker killed
//! the same way: no response committed in Postgres is missing from the topic afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use collect_testkit::Broker;
use common::{Env, Proc, env, metric, reader};
use rdkafka::message::Message;
use serde_json::json;

async fn crash_env() -> Env {
    env(json!({"title": "crash", "questions": [{"label": "N", "type": "text", "alias": "n"}]}))
        .await
}

/// Waits until the reader's `/status` says it streams.
async fn streaming(r: &Proc) {
    r.wait("/status", |v| v["state"] == "streaming").await;
}

/// Submits `n` responses, one every `gap`; returns their ids.
fn load(e: &Env, n: usize, gap: Duration) -> tokio::task::JoinHandle<BTreeSet<String>> {
    let (api, key, form) = (e.api.clone(), e.key.clone(), e.form_id().to_string());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut ids = BTreeSet::new();
        for i in 0..n {
            let r: serde_json::Value = http
                .post(format!("{api}/v1/forms/{form}/responses"))
                .bearer_auth(&key)
                .json(&json!({"answers": {"n": format!("r{i}")}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.insert(r["id"].as_str().unwrap().to_string());
            tokio::time::sleep(gap).await;
        }
        ids
    })
}

/// Response ids in the topic, read from the beginning until `want` are all there.
async fn wait_for_all(brokers: &str, topic: &str, want: &BTreeSet<String>) {
    let consumer = common::from_beginning(brokers, topic, &[]);
    let schema = apache_avro::Schema::parse_str(collect_events::RESPONSE_EVENT_SCHEMA).unwrap();
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !want.is_subset(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} responses missing from {topic}",
            want.difference(&seen).count(),
            want.len()
        );
        let got = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)));
        if let Some(Ok(m)) = got {
            let (_, payload) = collect_events::split_frame(m.payload().unwrap()).unwrap();
            let ev: collect_events::ResponseEvent =
                collect_events::decode(payload, &schema, None).unwrap();
            seen.insert(ev.response_id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_reader_during_load_loses_nothing() {
    let e = crash_env().await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let r = reader(&e, &brokers);
    streaming(&r).await;
    let writes = load(&e, 600, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    r.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = reader(&e, &brokers);
    streaming(&r).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.kill9();
    let r = reader(&e, &brokers);
    let ids = writes.await.unwrap();
    assert_eq!(ids.len(), 600);
    wait_for_all(&brokers, &format!("{}.responses", e.db.name), &ids).await;
    // The reader's metrics say what happened: events acknowledged, transactions confirmed
    // with their commit-to-ack times, the slot's position and lag, leadership.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = r.metrics().await;
        let value = |name: &str| metric(&text, name);
        let ok = value("collect_cdc_events_total") > 0.0
            && value("collect_cdc_transactions_total") > 0.0
            && value("collect_cdc_commit_to_ack_seconds_count") > 0.0
            && value("collect_cdc_confirmed_lsn") > 0.0
            && value("collect_cdc_leader") == 1.0
            && text.contains("collect_cdc_slot_lag_bytes")
            && text.contains("collect_cdc_snapshot_rows_total");
        if ok {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed progress:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_broker_during_load_loses_nothing() {
    let e = crash_env().await;
    let mut broker = Broker::start().await.unwrap();
    let brokers = broker.bootstrap();
    let r = reader(&e, &brokers);
    streaming(&r).await;
    let writes = load(&e, 600, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    broker.kill9().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().await.unwrap();
    let ids = writes.await.unwrap();
    wait_for_all(&brokers, &format!("{}.responses", e.db.name), &ids).await;
    r.kill9();
}
