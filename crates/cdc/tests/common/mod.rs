//! A stack for CDC tests: a fresh database on the harness' Postgres, the shared broker,
//! `collect registry` and the forms API in-process on free ports, and readers started and
//! stopped at will. Topics and slot are named after the database, so tests never share them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use collect_cdc::kafka::KafkaSettings;
use collect_cdc::metrics::Metrics;
use collect_events::{FormEvent, ResponseEvent};
use collect_store::{PoolSettings, Store, connect_pool};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde_json::{Value, json};
use tokio::sync::watch;

pub struct Stack {
    pub db: collect_testkit::TestDb,
    /// The URL the parts connect with.
    pub url: String,
    pub sql: tokio_postgres::Client,
    pub brokers: String,
    pub registry: String,
    pub api: String,
    pub key: String,
    pub http: reqwest::Client,
    pub name: String,
    /// The reader's largest record (tests of oversized events lower it).
    pub max_message_bytes: usize,
}

pub struct Reader {
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), collect_cdc::CdcError>>,
    pub metrics: Arc<Metrics>,
}

impl Reader {
    /// Waits until the reader streams (its snapshot, if any, is done).
    pub async fn streaming(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.metrics.status().state != "streaming" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reader not streaming: {:?}",
                self.metrics.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("reader did not stop within 30 s")
            .unwrap()
            .unwrap();
    }
}

/// One record as read from the broker.
#[derive(Debug, Clone)]
pub struct RawRec {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// One decoded record.
#[derive(Debug, Clone)]
pub struct Rec<T> {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: T,
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` to choose the level).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .with_test_writer()
        .try_init();
}

impl Stack {
    pub async fn new() -> Stack {
        let db = collect_testkit::fresh_db().await.unwrap();
        let url = db.url.clone();
        Self::on(db, url).await
    }

    /// A stack over `db`, whose parts (registry, API, reader) connect with `url` (the same
    /// database, with TLS settings say); the test's own SQL connection is plain.
    pub async fn on(db: collect_testkit::TestDb, url: String) -> Stack {
        init_logs();
        let broker = collect_testkit::shared_broker().await.unwrap();
        let pool = || connect_pool(&url, &PoolSettings::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let registry = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(collect_registry::serve(
            listener,
            pool(),
            std::future::pending(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let store = Store::new(pool());
        let key = store.create_org("cdc test").await.unwrap().api_key;
        tokio::spawn(collect_api::serve(
            listener,
            collect_api::AppState::new(store),
            std::future::pending(),
        ));
        let sql = db.connect().await.unwrap();
        let name = db.name.clone();
        Stack {
            db,
            url,
            sql,
            brokers: broker.bootstrap(),
            registry,
            api,
            key,
            http: reqwest::Client::new(),
            name,
            max_message_bytes: collect_cdc::kafka::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    pub fn topic(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    pub fn config(&self) -> collect_cdc::Config {
        collect_cdc::Config {
            database_url: self.url.clone(),
            registry_url: self.registry.clone(),
            slot: self.name.clone(),
            publication: "collect".into(),
            kafka: KafkaSettings {
                brokers: self.brokers.clone(),
                responses_topic: self.topic("responses"),
                forms_topic: self.topic("forms"),
                dead_letter_topic: self.topic("dlq"),
                partitions: 4,
                replication_factor: -1,
                message_timeout: Duration::from_secs(120),
                max_queued: 1000,
                compression: "none".into(),
                max_message_bytes: self.max_message_bytes,
                min_compaction_lag: collect_cdc::kafka::DEFAULT_MIN_COMPACTION_LAG,
                extra: vec![],
            },
            heartbeat: Some(Duration::from_secs(1)),
            status_interval: Duration::from_millis(200),
            snapshot_chunk: 7,
            on_slot_lost: collect_cdc::OnSlotLost::Resnapshot,
        }
    }

    pub fn start_reader(&self, cfg: collect_cdc::Config) -> Reader {
        let metrics = Metrics::new(&cfg.slot);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(collect_cdc::run(cfg, metrics.clone(), stopped));
        Reader {
            stop,
            task,
            metrics,
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn form(&self, title: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/v1/forms",
            Some(json!({"title": title, "questions": [
                {"label": "Name", "type": "text", "alias": "name", "required": true},
                {"label": "Essay", "type": "long_text", "alias": "essay"},
                {"label": "Age", "type": "number", "alias": "age"}
            ]})),
        )
        .await
    }

    pub async fn submit(&self, form_id: &str, answers: Value) -> String {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/forms/{form_id}/responses"),
                Some(json!({"answers": answers})),
            )
            .await;
        r["id"].as_str().unwrap().to_string()
    }

    /// The slot's confirmed flush LSN as a number.
    pub async fn confirmed_lsn(&self) -> u64 {
        let row = self
            .sql
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .unwrap();
        row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0) as u64
    }

    /// Reads every record of `topic` from the beginning until `done` says enough, or
    /// panics after `deadline`.
    pub async fn read_raw(
        &self,
        topic: &str,
        deadline: Duration,
        done: impl Fn(&[RawRec]) -> bool,
    ) -> Vec<RawRec> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        let topic = topic.to_string();
        let end = tokio::time::Instant::now() + deadline;
        let mut out = Vec::new();
        let mut assigned = false;
        loop {
            if !assigned {
                let meta = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5));
                if let Ok(meta) = meta
                    && let Some(t) = meta.topics().first()
                    && !t.partitions().is_empty()
                {
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    for p in t.partitions() {
                        tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)
                            .unwrap();
                    }
                    consumer.assign(&tpl).unwrap();
                    assigned = true;
                }
            }
            if assigned {
                while let Some(m) = consumer.poll(Duration::from_millis(100)) {
                    let m = m.unwrap();
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_string(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default())
                                            .to_string(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(RawRec {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
            }
            if done(&out) {
                return out;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{topic}: only {} records after {deadline:?}",
                out.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Decodes records through the registry (the schema named by each record's id).
    async fn decode<T: serde::de::DeserializeOwned>(&self, raw: Vec<RawRec>) -> Vec<Rec<T>> {
        let decoder = AvroDecoder::new(SrSettings::new(self.registry.clone()));
        let mut out = Vec::new();
        for r in raw {
            let value = decoder.decode(Some(&r.payload)).await.unwrap().value;
            out.push(Rec {
                partition: r.partition,
                offset: r.offset,
                key: r.key,
                value: apache_avro::from_value::<T>(&value).unwrap(),
            });
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }

    /// Response events until `done` says enough (checked on events decoded with the
    /// schema in the repository), returned decoded through the registry.
    pub async fn responses(
        &self,
        deadline: Duration,
        done: impl Fn(&[Rec<ResponseEvent>]) -> bool,
    ) -> Vec<Rec<ResponseEvent>> {
        let schema = apache_avro::Schema::parse_str(collect_events::RESPONSE_EVENT_SCHEMA).unwrap();
        let raw = self
            .read_raw(&self.topic("responses"), deadline, |raw| {
                let mut events: Vec<Rec<ResponseEvent>> = raw
                    .iter()
                    .map(|r| Rec {
                        partition: r.partition,
                        offset: r.offset,
                        key: r.key.clone(),
                        value: collect_events::decode(
                            collect_events::split_frame(&r.payload).unwrap().1,
                            &schema,
                            None,
                        )
                        .unwrap(),
                    })
                    .collect();
                events.sort_by_key(|r| (r.partition, r.offset));
                done(&events)
            })
            .await;
        self.decode(raw).await
    }

    /// Form events, decoded through the registry, until `done`.
    pub async fn form_events(
        &self,
        deadline: Duration,
        done: impl Fn(usize) -> bool,
    ) -> Vec<Rec<FormEvent>> {
        let raw = self
            .read_raw(&self.topic("forms"), deadline, |raw| done(raw.len()))
            .await;
        self.decode(raw).await
    }
}

/// The distinct response ids seen.
pub fn ids(events: &[Rec<ResponseEvent>]) -> std::collections::BTreeSet<String> {
    events.iter().map(|r| r.value.response_id.clone()).collect()
}
