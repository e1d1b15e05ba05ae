//! What the process-level tests share: a database with the registry and forms API serving
//! it (in this process, over real HTTP), and `collect` subcommands run as real processes
//! that the tests can kill with SIGKILL.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod providers;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use collect_store::{PoolSettings, Store, connect_pool};
use collect_testkit::TestDb;
use serde_json::{Value, json};

/// A fresh database with the registry and the forms API in front of it, and one form.
pub struct Env {
    pub db: TestDb,
    pub registry: String,
    pub api: String,
    pub key: String,
    pub org: String,
    pub form: Value,
    pub http: reqwest::Client,
}

/// Starts the registry and the API on a fresh database and creates `form` through the API.
pub async fn env(form: Value) -> Env {
    let db = collect_testkit::fresh_db().await.unwrap();
    let pool = || connect_pool(&db.url, &PoolSettings::default()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(collect_registry::serve(l, pool(), std::future::pending()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", l.local_addr().unwrap());
    let store = Store::new(pool());
    let org = store.create_org("pipeline").await.unwrap();
    tokio::spawn(collect_api::serve(
        l,
        collect_api::AppState::new(store),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let form: Value = http
        .post(format!("{api}/v1/forms"))
        .bearer_auth(&org.api_key)
        .json(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(form["id"].is_string(), "{form}");
    Env {
        db,
        registry,
        api,
        key: org.api_key,
        org: org.org_id.to_string(),
        form,
        http,
    }
}

impl Env {
    pub fn form_id(&self) -> &str {
        self.form["id"].as_str().unwrap()
    }

    pub fn topic(&self, what: &str) -> String {
        format!("{}.{what}", self.db.name)
    }

    /// Calls the forms API; panics on a transport error, returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// Submits a response; returns its id.
    pub async fn submit(&self, answers: Value) -> String {
        let (s, r) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/forms/{}/responses", self.form_id()),
                Some(json!({"answers": answers})),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        r["id"].as_str().unwrap().to_string()
    }

    /// Creates an integration through `connect`'s API; asserts 201 and returns its JSON.
    pub async fn attach(&self, connect: &Proc, body: &Value) -> Value {
        let r = self
            .http
            .post(format!("{}/v1/integrations", connect.url()))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let created: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "{created}");
        created
    }

    /// The environment of a `collect` process working on this database and its topics.
    pub fn process_env(&self, brokers: &str) -> Vec<(String, String)> {
        [
            ("COLLECT_DATABASE_URL", self.db.url.clone()),
            ("COLLECT_REGISTRY_URL", self.registry.clone()),
            ("COLLECT_KAFKA_BROKERS", brokers.to_string()),
            ("COLLECT_CDC_SLOT", self.db.name.clone()),
            ("COLLECT_RESPONSES_TOPIC", self.topic("responses")),
            ("COLLECT_FORMS_TOPIC", self.topic("forms")),
            ("COLLECT_CDC_DEAD_LETTER_TOPIC", self.topic("dlq")),
            (
                "COLLECT_CONNECT_DEAD_LETTER_TOPIC",
                self.topic("connect.dlq"),
            ),
            // Verbose JSON logs to a file per process: tests search them for secrets.
            (
                "RUST_LOG",
                "info,collect_connect=debug,collect_sheets=debug,collect_sms=debug,collect_cdc=debug,librdkafka=warn,rdkafka=warn"
                    .to_string(),
            ),
            ("COLLECT_LOG_FORMAT", "json".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// A `collect` subcommand running as a process, serving HTTP on `port`.
pub struct Proc {
    child: Option<Child>,
    pub port: u16,
    /// Where its stderr (its logs) goes.
    pub log: std::path::PathBuf,
}

impl Proc {
    /// Starts `collect <args>` with `env`; `listen_var` is set to a free loopback port.
    pub fn start(args: &[&str], env: &[(String, String)], listen_var: &str) -> Self {
        let port = collect_testkit::process::free_port().unwrap();
        let dir = std::env::temp_dir().join("collect-test-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{}-{port}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_collect"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(listen_var, format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            port,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until GET `path` answers 2xx and `ok` accepts its JSON (60 s at most).
    pub async fn wait(&self, path: &str, ok: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{}{path}", self.url())).await
                && r.status().is_success()
                && ok(&r.json::<Value>().await.unwrap_or(Value::Null))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} of port {} not ready after 60 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of the samples of a metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    collect_testkit::metric_sum(text, name)
}

/// A consumer of every partition of `topic` (3, as the tests' readers make them) from the
/// beginning, with extra librdkafka `settings` (TLS, say).
pub fn from_beginning(
    brokers: &str,
    topic: &str,
    settings: &[(&str, &str)],
) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let consumer: rdkafka::consumer::BaseConsumer = config.create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// `collect cdc` on the environment's database and topics.
pub fn reader(e: &Env, brokers: &str) -> Proc {
    Proc::start(
        &[
            "cdc",
            "--partitions",
            "3",
            "--heartbeat-secs",
            "1",
            "--message-timeout-secs",
            "120",
        ],
        &e.process_env(brokers),
        "COLLECT_CDC_METRICS_LISTEN",
    )
}
