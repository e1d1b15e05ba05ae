//! The stack the chaos run owns: a Postgres cluster and a Tansu broker of its own (testkit),
//! and every `collect` part as a real process it can kill with SIGKILL and start again on the
//! same port: the registry, the forms API, two readers on one slot (one streams, one stands
//! by), two `collect connect`, and the Sheets and SMS emulators.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use collect_testkit::process::{Guarded, ServerSpec};
use collect_testkit::{Broker, PgCluster, PgOptions};
use serde_json::Value;

/// The key that seals integration credentials in this run's database.
pub const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// One `collect` subcommand as a process, always on the same loopback port.
pub struct Part {
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    listen_var: &'static str,
    pub port: u16,
    log: PathBuf,
    /// Under testkit's guardian: stopped when this program ends, however it ends.
    child: Option<Guarded>,
    /// Where it answers when up (`/healthz`, `/readyz`).
    ready_path: &'static str,
}

impl Part {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Guarded::pid)
    }

    /// Whether it was started and still runs.
    pub fn running(&self) -> bool {
        self.child.as_ref().is_some_and(Guarded::alive)
    }

    /// Starts it (logs appended to its file) and waits until it answers its ready path.
    pub async fn start(&mut self, http: &reqwest::Client) -> Result<()> {
        let mut argv = vec!["env".to_string()];
        argv.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(format!("{}=127.0.0.1:{}", self.listen_var, self.port));
        argv.push(self.bin.display().to_string());
        argv.extend(self.args.iter().cloned());
        let spec = ServerSpec {
            argv,
            cwd: self.log.parent().map(Path::to_path_buf).unwrap_or_default(),
            log: self.log.clone(),
            user: None,
            stop_signal: "TERM",
        };
        self.child = Some(
            Guarded::spawn(&spec)
                .with_context(|| format!("starting {} {:?}", self.bin.display(), self.args))?,
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = http
                .get(format!("{}{}", self.url(), self.ready_path))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            if !self.child.as_ref().is_some_and(Guarded::alive) {
                bail!("{} exited; its log: {}", self.name, self.log.display());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after 120 s: {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = c.signal("KILL");
            c.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            c.stop(Duration::from_secs(10));
        }
    }
}

/// Everything the run starts.
pub struct Stack {
    pub pg: PgCluster,
    pub broker: Broker,
    pub db_url: String,
    pub registry: Part,
    pub api: Part,
    pub sheets: Part,
    pub sms: Part,
    pub readers: [Part; 2],
    pub connects: [Part; 2],
    pub dir: PathBuf,
}

/// What the parts are started with.
pub struct Options {
    pub bin: PathBuf,
    /// `COLLECT_CONNECT_CAPACITY` of each connect process.
    pub capacity: usize,
    pub partitions: u32,
    /// Postgres with `fsync` on (every acknowledged submission durable, as in production).
    pub fsync: bool,
}

impl Stack {
    /// Starts Postgres, the broker and every part, each waited for.
    pub async fn start(o: &Options, http: &reqwest::Client) -> Result<Self> {
        if !o.bin.exists() {
            bail!(
                "{} does not exist (cargo build --release -p collect)",
                o.bin.display()
            );
        }
        // The parts run in the log directory: the binary by its absolute path.
        let bin = o.bin.canonicalize()?;
        let dir = collect_testkit::process::scratch_dir("chaos")?;
        let pg = PgCluster::start(PgOptions {
            settings: vec![("max_connections".into(), "400".into())],
            fsync: o.fsync,
            ..PgOptions::default()
        })
        .await?;
        let broker = Broker::start().await?;
        event_topics(&broker.bootstrap(), o.partitions).await?;
        let admin = collect_testkit::connect(&pg.url("postgres")).await?;
        admin.batch_execute("CREATE DATABASE collect").await?;
        let db_url = pg.url("collect");
        collect_testkit::migrate(&db_url).await?;

        let registry_port = collect_testkit::process::free_port()?;
        let base: Vec<(String, String)> = [
            ("COLLECT_DATABASE_URL", db_url.clone()),
            (
                "COLLECT_REGISTRY_URL",
                format!("http://127.0.0.1:{registry_port}"),
            ),
            ("COLLECT_KAFKA_BROKERS", broker.bootstrap()),
            ("COLLECT_SECRET_KEY", SECRET.to_string()),
            ("COLLECT_KAFKA_COMPRESSION", "none".to_string()),
            ("COLLECT_TOPIC_PARTITIONS", o.partitions.to_string()),
            ("COLLECT_CONNECT_CAPACITY", o.capacity.to_string()),
            (
                "RUST_LOG",
                std::env::var("COLLECT_CHAOS_LOG")
                    .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".to_string()),
            ),
            ("COLLECT_LOG_FORMAT", "json".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let part = |name: &str, args: &[&str], listen_var, ready_path, port: Option<u16>| {
            Ok::<_, anyhow::Error>(Part {
                name: name.to_string(),
                bin: bin.clone(),
                args: args.iter().map(|s| s.to_string()).collect(),
                env: base.clone(),
                listen_var,
                port: match port {
                    Some(p) => p,
                    None => collect_testkit::process::free_port()?,
                },
                log: dir.join(format!("{name}.log")),
                child: None,
                ready_path,
            })
        };
        let reader = |name| {
            part(
                name,
                &["cdc", "--heartbeat-secs", "1"],
                "COLLECT_CDC_METRICS_LISTEN",
                "/healthz",
                None,
            )
        };
        let connect = |name| {
            part(
                name,
                &["connect"],
                "COLLECT_CONNECT_LISTEN",
                "/readyz",
                None,
            )
        };
        let mut s = Stack {
            registry: part(
                "registry",
                &["registry"],
                "COLLECT_REGISTRY_LISTEN",
                "/readyz",
                Some(registry_port),
            )?,
            api: part("api", &["api"], "COLLECT_API_LISTEN", "/readyz", None)?,
            sheets: part(
                "sheets",
                &["emulate", "sheets"],
                "COLLECT_SHEETS_EMULATOR_LISTEN",
                "/healthz",
                None,
            )?,
            sms: part(
                "sms",
                &["emulate", "sms"],
                "COLLECT_SMS_EMULATOR_LISTEN",
                "/emulator/stats",
                None,
            )?,
            readers: [reader("cdc-a")?, reader("cdc-b")?],
            connects: [connect("connect-a")?, connect("connect-b")?],
            pg,
            broker,
            db_url,
            dir,
        };
        s.registry.start(http).await?;
        s.api.start(http).await?;
        s.sheets.start(http).await?;
        s.sms.start(http).await?;
        for r in &mut s.readers {
            r.start(http).await?;
        }
        for c in &mut s.connects {
            c.start(http).await?;
        }
        Ok(s)
    }

    /// The reader that holds the slot (its `/status` says streaming), if any.
    pub async fn active_reader(&self, http: &reqwest::Client) -> Option<usize> {
        for (i, r) in self.readers.iter().enumerate() {
            if let Ok(resp) = http.get(format!("{}/status", r.url())).send().await
                && let Ok(v) = resp.json::<Value>().await
                && v["state"] == "streaming"
            {
                return Some(i);
            }
        }
        None
    }

    /// A new organization in the run's database: its API key.
    pub async fn org(&self, name: &str) -> Result<String> {
        let pool =
            collect_store::connect_pool(&self.db_url, &collect_store::PoolSettings::default())
                .map_err(anyhow::Error::msg)?;
        let org = collect_store::Store::new(pool)
            .create_org(name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(org.api_key)
    }

    /// Every `collect` part.
    pub fn parts(&self) -> impl Iterator<Item = &Part> {
        [&self.registry, &self.api, &self.sheets, &self.sms]
            .into_iter()
            .chain(self.readers.iter())
            .chain(self.connects.iter())
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

/// Creates the event topics before the reader does, keeping every record for the run. The
/// reader creates them compacted with `min.compaction.lag.ms` of a week, so on Apache Kafka
/// no record of a run this short is ever compacted away. Tansu ignores that setting and
/// compacts every key each time it starts, newest records included (records the reader
/// writes while its maintenance runs too): after a kill of the broker, an integration that
/// was behind would find only the latest record of some responses, which Apache Kafka
/// would not do to it. Kept whole, the topics behave here as they do there. The reader
/// finds them and uses them as they are.
async fn event_topics(brokers: &str, partitions: u32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let partitions = i32::try_from(partitions)?;
    let topics: Vec<NewTopic<'_>> = ["collect.responses", "collect.forms"]
        .into_iter()
        .map(|name| {
            NewTopic::new(name, partitions, TopicReplication::Fixed(-1))
                .set("cleanup.policy", "delete")
                // A year: Tansu takes -1 for zero.
                .set("retention.ms", "31536000000")
        })
        .collect();
    for r in admin
        .create_topics(topics.iter(), &AdminOptions::new())
        .await?
    {
        r.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;
    }
    Ok(())
}

/// A value of a process's Prometheus text: the sum of every series of `name`.
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let Ok(r) = http.get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    collect_testkit::metric_sum(&text, name)
}
