//! `collect cdc` as a real process, killed with SIGKILL during load, and the broker killed
//! the same way: no response committed in Postgres is missing from the topic afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use collect_store::{PoolSettings, Store, connect_pool};
use collect_testkit::{Broker, TestDb};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::json;

struct Env {
    db: TestDb,
    registry: String,
    api: String,
    key: String,
    form: String,
}

async fn env() -> Env {
    let db = collect_testkit::fresh_db().await.unwrap();
    let pool = || connect_pool(&db.url, &PoolSettings::default()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(collect_registry::serve(l, pool(), std::future::pending()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", l.local_addr().unwrap());
    let store = Store::new(pool());
    let key = store.create_org("crash").await.unwrap().api_key;
    tokio::spawn(collect_api::serve(
        l,
        collect_api::AppState::new(store),
        std::future::pending(),
    ));
    let form: serde_json::Value = reqwest::Client::new()
        .post(format!("{api}/v1/forms"))
        .bearer_auth(&key)
        .json(
            &json!({"title": "crash", "questions": [{"label": "N", "type": "text", "alias": "n"}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Env {
        form: form["id"].as_str().unwrap().to_string(),
        db,
        registry,
        api,
        key,
    }
}

struct Reader {
    child: Child,
    port: u16,
}

impl Reader {
    /// Waits until `/status` says the reader streams.
    async fn streaming(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let state = reqwest::get(format!("http://127.0.0.1:{}/status", self.port))
                .await
                .ok()
                .map(|r| r.json::<serde_json::Value>());
            if let Some(fut) = state
                && let Ok(v) = fut.await
                && v["state"] == "streaming"
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "reader not streaming after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The reader's Prometheus text.
    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn kill9(mut self) {
        Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

fn reader(e: &Env, brokers: &str) -> Reader {
    let port = collect_testkit::process::free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_collect"))
        .args([
            "cdc",
            "--partitions",
            "3",
            "--heartbeat-secs",
            "1",
            "--message-timeout-secs",
            "120",
        ])
        .env("COLLECT_DATABASE_URL", &e.db.url)
        .env("COLLECT_REGISTRY_URL", &e.registry)
        .env("COLLECT_KAFKA_BROKERS", brokers)
        .env("COLLECT_CDC_SLOT", &e.db.name)
        .env(
            "COLLECT_RESPONSES_TOPIC",
            format!("{}.responses", e.db.name),
        )
        .env("COLLECT_FORMS_TOPIC", format!("{}.forms", e.db.name))
        .env(
            "COLLECT_CDC_DEAD_LETTER_TOPIC",
            format!("{}.dlq", e.db.name),
        )
        .env("COLLECT_CDC_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Reader { child, port }
}

/// Submits `n` responses, one every `gap`; returns their ids.
fn load(e: &Env, n: usize, gap: Duration) -> tokio::task::JoinHandle<BTreeSet<String>> {
    let (api, key, form) = (e.api.clone(), e.key.clone(), e.form.clone());
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
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
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
    let e = env().await;
    let broker = collect_testkit::shared_broker().await.unwrap();
    let brokers = broker.bootstrap();
    let r = reader(&e, &brokers);
    r.streaming().await;
    let writes = load(&e, 600, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    r.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = reader(&e, &brokers);
    r.streaming().await;
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
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
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
    let e = env().await;
    let mut broker = Broker::start().await.unwrap();
    let brokers = broker.bootstrap();
    let r = reader(&e, &brokers);
    r.streaming().await;
    let writes = load(&e, 600, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    broker.kill9().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().await.unwrap();
    let ids = writes.await.unwrap();
    wait_for_all(&brokers, &format!("{}.responses", e.db.name), &ids).await;
    r.kill9();
}
