//! The environment of a conformance run: a fresh database, the harness' broker with topics of
//! its own, the registry in-process, an organization and a form, and helpers to produce
//! events (as the CDC reader encodes them) and run workers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use collect_events::{
    Answer, FormEvent, FormOp, QuestionState, ResponseEvent, ResponseOp, form_codec, partition_for,
    response_codec,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::decode::Decoder;
use crate::dlq::DeadLetters;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::store::{Integration, IntegrationStore, NewIntegration};
use crate::worker::{Job, Settings, Shared, WorkerExit};

/// Partitions of the test topics.
pub const PARTITIONS: i32 = 3;

/// A conformance environment.
pub struct Env {
    /// The database.
    pub db: collect_testkit::TestDb,
    /// A pool on it.
    pub pool: deadpool_postgres::Pool,
    /// Broker address.
    pub brokers: String,
    /// Registry URL.
    pub registry: String,
    /// What workers share (settings may be changed before starting workers).
    pub shared: Shared,
    /// The test organization.
    pub org: Uuid,
    /// The test form.
    pub form: Uuid,
    /// Its API key (for the connect API).
    pub api_key: String,
    producer: FutureProducer,
    response_schema_id: u32,
    form_schema_id: u32,
}

/// A worker started by the environment.
pub struct RunningWorker {
    /// Stops it.
    pub stop: watch::Sender<bool>,
    /// Its task.
    pub handle: JoinHandle<WorkerExit>,
}

impl RunningWorker {
    /// Stops it and waits (30 s at most) for its exit.
    pub async fn stop(self) -> WorkerExit {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(30), self.handle).await {
            Ok(Ok(exit)) => exit,
            Ok(Err(e)) => WorkerExit::Failed(format!("worker panicked: {e}")),
            Err(_) => WorkerExit::Failed("worker did not stop within 30 s".into()),
        }
    }
}

/// A dead letter as read back.
#[derive(Debug, Clone)]
pub struct ReadDeadLetter {
    /// Headers.
    pub headers: HashMap<String, String>,
    /// Value (the original record's).
    pub value: Vec<u8>,
}

async fn create_topics(brokers: &str, names: &[String]) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(-1)))
        .collect();
    admin
        .create_topics(topics.iter(), &AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

impl Env {
    /// A fresh environment.
    pub async fn new() -> Result<Env, String> {
        let db = collect_testkit::fresh_db()
            .await
            .map_err(|e| e.to_string())?;
        let broker = collect_testkit::shared_broker()
            .await
            .map_err(|e| e.to_string())?;
        let brokers = broker.bootstrap();
        let pool = collect_store::connect_pool(&db.url, &collect_store::PoolSettings::default())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let registry = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        tokio::spawn(collect_registry::serve(
            listener,
            pool.clone(),
            std::future::pending(),
        ));
        let topic = |t: &str| format!("{}.{t}", db.name);
        let (responses, forms, dlq) = (topic("responses"), topic("forms"), topic("connect.dlq"));
        create_topics(&brokers, &[responses.clone(), forms.clone(), dlq.clone()]).await?;
        let sr = SrSettings::new(registry.clone());
        let response_schema_id = post_schema(
            &sr,
            format!("{responses}-value"),
            SuppliedSchema::new(
                None,
                SchemaType::Avro,
                collect_events::RESPONSE_EVENT_SCHEMA.into(),
            ),
        )
        .await
        .map_err(|e| e.to_string())?
        .id;
        let form_schema_id = post_schema(
            &sr,
            format!("{forms}-value"),
            SuppliedSchema::new(
                None,
                SchemaType::Avro,
                collect_events::FORM_EVENT_SCHEMA.into(),
            ),
        )
        .await
        .map_err(|e| e.to_string())?
        .id;
        let store = collect_store::Store::new(pool.clone());
        let org = store
            .create_org("conformance")
            .await
            .map_err(|e| e.to_string())?;
        let form = Uuid::now_v7();
        let c = pool.get().await.map_err(|e| e.to_string())?;
        c.execute(
            "INSERT INTO forms (id, org_id, title) VALUES ($1, $2, 'conformance')",
            &[&form, &org.org_id],
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut settings = Settings::new(&brokers, &registry, &responses, &forms);
        settings.batch_max_wait = Duration::from_millis(100);
        settings.idle_commit = Duration::from_millis(500);
        settings.retry.initial = Duration::from_millis(20);
        settings.retry.max = Duration::from_millis(500);
        let settings = Arc::new(settings);
        let decoder = Arc::new(Decoder::new(&registry));
        let metrics = Metrics::new();
        let shared = Shared {
            feed: crate::feed::Feed::new(settings.clone(), decoder.clone(), metrics.clone())?,
            settings,
            decoder,
            dead_letters: DeadLetters::new(&brokers, &dlq, &[]).map_err(|e| e.to_string())?,
            metrics,
            limiter: Limiter::new(),
            db: pool.clone(),
        };
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| e.to_string())?;
        Ok(Env {
            db,
            pool,
            brokers,
            registry,
            shared,
            org: org.org_id,
            form,
            api_key: org.api_key,
            producer,
            response_schema_id,
            form_schema_id,
        })
    }

    /// Replaces worker settings (before starting workers).
    pub fn settings(&mut self, f: impl FnOnce(&mut Settings)) {
        let mut s = (*self.shared.settings).clone();
        f(&mut s);
        self.shared.settings = Arc::new(s);
        // The feed reads with the new settings (memory budget, catch-up readers).
        if let Ok(feed) = crate::feed::Feed::new(
            self.shared.settings.clone(),
            self.shared.decoder.clone(),
            self.shared.metrics.clone(),
        ) {
            self.shared.feed = feed;
        }
    }

    /// Stores an integration of `kind` on the test form.
    pub async fn integration(&self, kind: &str, config: Value) -> Result<Integration, String> {
        self.integration_on(self.form, kind, config).await
    }

    /// Stores another form of the test organization whose events share the test form's
    /// partition (the reader partitions by form; many forms share each partition).
    pub async fn sibling_form(&self) -> Result<Uuid, String> {
        let form = std::iter::repeat_with(Uuid::now_v7)
            .find(|f| partition_for(&f.to_string(), PARTITIONS) == self.partition())
            .ok_or("no form id")?;
        let c = self.pool.get().await.map_err(|e| e.to_string())?;
        c.execute(
            "INSERT INTO forms (id, org_id, title) VALUES ($1, $2, 'sibling')",
            &[&form, &self.org],
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(form)
    }

    /// Stores an integration of `kind` on `form` (the test form or a sibling).
    pub async fn integration_on(
        &self,
        form: Uuid,
        kind: &str,
        config: Value,
    ) -> Result<Integration, String> {
        let (i, _) = IntegrationStore::new(self.pool.clone())
            .upsert(NewIntegration {
                org_id: self.org,
                form_id: form,
                kind,
                name: None,
                config: &config,
                sealed: None,
                // The suite's events are made up: every kind reads them all.
                start: Some(crate::store::Start::History),
                default_start: crate::store::Start::History,
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(i)
    }

    /// Starts a worker of `integration` around `sink`.
    pub fn start<S: Sink>(
        &self,
        sink: S,
        kind: &'static str,
        integration: &Integration,
    ) -> RunningWorker {
        let (stop, stopped) = watch::channel(false);
        let job = Job {
            integration: integration.clone(),
            // The suite's workers run without the supervisor: the integration's stored
            // generation (0 until a supervisor or a tool takes the lease).
            lease_generation: 0,
            shared: self.shared.clone(),
            stop: stopped,
        };
        RunningWorker {
            stop,
            handle: tokio::spawn(crate::worker::run(sink, kind, job)),
        }
    }

    /// A response event of the test form, as the reader would produce it.
    pub fn response(&self, id: &str, revision: i32, name: &str) -> ResponseEvent {
        ResponseEvent {
            event_id: format!("test/{id}/{revision}"),
            op: if revision == 1 {
                ResponseOp::Created
            } else {
                ResponseOp::Updated
            },
            response_id: id.into(),
            form_id: self.form.to_string(),
            org_id: self.org.to_string(),
            revision,
            source: "test".into(),
            metadata_json: "{}".into(),
            answers: vec![Answer {
                question_id: "01900000-0000-7000-8000-0000000000aa".into(),
                alias: Some("name".into()),
                question_type: "text".into(),
                text: Some(name.into()),
                number: None,
                boolean: None,
                date: None,
                choices: None,
            }],
            submitted_at: 1_700_000_000_000_000,
            updated_at: 1_700_000_000_000_000 + i64::from(revision),
            deleted_at: None,
            commit_lsn: i64::from(revision),
            commit_ts: 1_700_000_000_000_000,
            xid: 1,
        }
    }

    fn partition(&self) -> i32 {
        partition_for(&self.form.to_string(), PARTITIONS)
    }

    /// Produces response events to the responses topic, in order, waiting for acks.
    pub async fn produce(&self, events: &[ResponseEvent]) -> Result<(), String> {
        for e in events {
            let value = response_codec()
                .encode(self.response_schema_id, e)
                .map_err(|e| e.to_string())?;
            self.send(
                &self.shared.settings.responses_topic,
                &e.response_id,
                &value,
            )
            .await?;
        }
        Ok(())
    }

    /// Sends one record to the form's partition of `topic` and waits for its ack.
    async fn send(&self, topic: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(value)
                    .partition(self.partition()),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }

    /// A question event of the test form.
    pub fn question(
        &self,
        id: &str,
        label: &str,
        alias: &str,
        position: i32,
        deleted: bool,
    ) -> FormEvent {
        FormEvent {
            event_id: format!("test/q/{id}/{label}"),
            op: if deleted {
                FormOp::Deleted
            } else {
                FormOp::Updated
            },
            form_id: self.form.to_string(),
            form: None,
            question: Some(QuestionState {
                question_id: id.into(),
                label: label.into(),
                question_type: "text".into(),
                alias: Some(alias.into()),
                position,
                required: false,
                options: vec![],
                created_at: 1_700_000_000_000_000,
                updated_at: 1_700_000_000_000_000,
                deleted_at: deleted.then_some(1_700_000_000_000_001),
            }),
            commit_lsn: 1,
            commit_ts: 1_700_000_000_000_000,
            xid: 1,
        }
    }

    /// Produces form events to the forms topic (the form's partition), waiting for acks.
    pub async fn produce_forms(&self, events: &[FormEvent]) -> Result<(), String> {
        for e in events {
            let value = form_codec()
                .encode(self.form_schema_id, e)
                .map_err(|e| e.to_string())?;
            self.send(&self.shared.settings.forms_topic, &e.form_id, &value)
                .await?;
        }
        Ok(())
    }

    /// Produces bytes that are not an event into the form's partition.
    pub async fn produce_poison(&self, bytes: &[u8]) -> Result<(), String> {
        self.send(&self.shared.settings.responses_topic, "poison", bytes)
            .await
    }

    /// Reads the dead-letter topic until `n` records are there (or `deadline` passes).
    pub async fn dead_letters(&self, n: usize, deadline: Duration) -> Vec<ReadDeadLetter> {
        let Ok(consumer) = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("dlq-check-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>()
        else {
            return Vec::new();
        };
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            let _ = tpl.add_partition_offset(
                self.shared.dead_letters.topic(),
                p,
                rdkafka::Offset::Beginning,
            );
        }
        let _ = consumer.assign(&tpl);
        let end = tokio::time::Instant::now() + deadline;
        let mut out = Vec::new();
        while out.len() < n && tokio::time::Instant::now() < end {
            let got = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(100)));
            if let Some(Ok(m)) = got {
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
                out.push(ReadDeadLetter {
                    headers,
                    value: m.payload().unwrap_or_default().to_vec(),
                });
            }
        }
        out
    }
}
