//! `collect connect` (the connector runtime and its API) and `collect integrations apply`
//! (declarative integration files).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use collect_connect::api::{ApiState, NewIntegrationBody};
use collect_connect::crypto::Sealer;
use collect_connect::decode::Decoder;
use collect_connect::dlq::DeadLetters;
use collect_connect::feed::Feed;
use collect_connect::limits::Limiter;
use collect_connect::metrics::Metrics;
use collect_connect::store::IntegrationStore;
use collect_connect::supervisor::{self, Connect, Running};
use collect_connect::worker::{Settings, Shared};
use serde::Deserialize;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::kafka_options::KafkaOptions;
use crate::kinds::Installed;
use crate::{Db, Pipeline, shutdown_signal, store};

/// Options of `collect connect`.
#[derive(clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    pipeline: Pipeline,
    /// Topic of records no sink can write.
    #[arg(
        long,
        env = "COLLECT_CONNECT_DEAD_LETTER_TOPIC",
        default_value = "collect.connect.dlq"
    )]
    dead_letter_topic: String,
    /// Address of the connect API (and /metrics, /healthz, /readyz).
    #[arg(long, env = "COLLECT_CONNECT_LISTEN", default_value = "127.0.0.1:8082")]
    listen: String,
    /// Key sealing credentials at rest: 32 bytes, base64 (`openssl rand -base64 32`).
    #[arg(long, env = "COLLECT_SECRET_KEY", hide_env_values = true)]
    secret_key: String,
    /// Most integrations this process runs.
    #[arg(long, env = "COLLECT_CONNECT_CAPACITY", default_value_t = 2000)]
    capacity: usize,
    /// Milliseconds between reconciliations with the integrations table.
    #[arg(long, default_value_t = 2000)]
    poll_ms: u64,
    /// Most events per batch, for kinds without a preference of their own.
    #[arg(long, default_value_t = 1000)]
    batch_max_events: usize,
    /// The most events any kind's batch may hold (Sheets asks for 5,000): bounds the memory
    /// of each integration's worker.
    #[arg(long, default_value_t = 10_000)]
    batch_ceiling_events: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, default_value_t = 500)]
    batch_max_wait_ms: u64,
    /// Mebibytes the process's records may hold in memory across all its integrations
    /// (queued for them and in their batches); an integration that would hold more than its
    /// share reads again from its own position later.
    #[arg(long, env = "COLLECT_CONNECT_MEMORY_BUDGET_MB", default_value_t = 256)]
    memory_budget_mb: usize,
    /// Kafka consumers reading for integrations behind the shared one (new, replayed,
    /// resumed or slow), in turn.
    #[arg(long, env = "COLLECT_CONNECT_CATCH_UP_READERS", default_value_t = 2)]
    catch_up_readers: usize,
    #[command(flatten)]
    kafka: KafkaOptions,
    /// Keep rate limits in this process only, instead of sharing them through Postgres with
    /// the other `collect connect` processes (which is right whenever two processes may
    /// write for the same Google user or SMS sender).
    #[arg(long)]
    local_limits: bool,
    /// Integrations file applied at start (see `collect integrations apply`).
    #[arg(long, env = "COLLECT_INTEGRATIONS_FILE")]
    integrations_file: Option<PathBuf>,
}

/// `collect integrations ...`
#[derive(Subcommand)]
pub enum IntegrationsCommand {
    /// Creates or replaces (by name) the integrations of a TOML file.
    Apply {
        #[command(flatten)]
        db: Db,
        /// Key sealing credentials at rest.
        #[arg(long, env = "COLLECT_SECRET_KEY", hide_env_values = true)]
        secret_key: String,
        /// The file.
        #[arg(long)]
        file: PathBuf,
    },
}

/// One `[[integration]]` of a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    org_id: Uuid,
    form_id: Uuid,
    kind: String,
    #[serde(default)]
    config: Option<toml::Value>,
    #[serde(default)]
    credentials: Option<toml::Value>,
    /// A JSON file holding the credentials (keeps secrets out of the integrations file).
    #[serde(default)]
    credentials_file: Option<PathBuf>,
    /// `history`, `creation` or an RFC 3339 time (the kind's default when absent).
    #[serde(default)]
    start: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationsFile {
    #[serde(default)]
    integration: Vec<FileEntry>,
}

fn api_state(
    pool: deadpool_postgres::Pool,
    sealer: Arc<Sealer>,
    running: Running,
    metrics: Arc<Metrics>,
) -> ApiState {
    ApiState {
        keys: collect_store::Store::new(pool.clone()),
        integrations: IntegrationStore::new(pool),
        kinds: Arc::new(Installed),
        sealer,
        running,
        metrics,
    }
}

/// Validates every entry of `file` with its kind, then stores them all; nothing is stored if
/// any entry is invalid.
async fn apply_file(state: &ApiState, file: &PathBuf) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: IntegrationsFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid integrations file", file.display()))?;
    let mut bodies = Vec::new();
    for (i, e) in parsed.integration.into_iter().enumerate() {
        let credentials = match (&e.credentials, &e.credentials_file) {
            (Some(_), Some(_)) => bail!(
                "integration {i} ({}): give credentials or credentials_file, not both",
                e.name
            ),
            (Some(c), None) => Some(serde_json::to_value(c)?),
            (None, Some(path)) => {
                let raw = std::fs::read_to_string(path).with_context(|| {
                    format!("integration {i} ({}): reading {}", e.name, path.display())
                })?;
                Some(serde_json::from_str(&raw).with_context(|| {
                    format!(
                        "integration {i} ({}): {} is not JSON",
                        e.name,
                        path.display()
                    )
                })?)
            }
            (None, None) => None,
        };
        let body = NewIntegrationBody {
            kind: e.kind,
            form_id: e.form_id.to_string(),
            name: Some(e.name.clone()),
            config: e.config.map(serde_json::to_value).transpose()?,
            credentials,
            start: e.start,
        };
        bodies.push((i, e.name, e.org_id, body));
    }
    // Validate everything before storing anything.
    let mut prepared = Vec::new();
    for (i, name, org, body) in bodies {
        let kind = body.kind.clone();
        if let Some(start) = &body.start {
            collect_connect::store::Start::parse(start)
                .map_err(|e| anyhow::anyhow!("integration {i} ({name}): {e}"))?;
        }
        let config = body.config.clone().unwrap_or_else(|| serde_json::json!({}));
        state
            .kinds
            .prepare(&kind, config, body.credentials.clone())
            .await
            .map_err(|e| anyhow::anyhow!("integration {i} ({name}): {e}"))?;
        prepared.push((i, name, org, body));
    }
    for (i, name, org, body) in prepared {
        let (stored, created) = collect_connect::api::apply(state, org, body)
            .await
            .map_err(|e| anyhow::anyhow!("integration {i} ({name}): {}", e.message))?;
        println!(
            "{}",
            serde_json::json!({"name": name, "id": stored.id, "created": created})
        );
    }
    Ok(())
}

/// `collect integrations ...`
pub async fn integrations(cmd: IntegrationsCommand) -> Result<()> {
    let IntegrationsCommand::Apply {
        db,
        secret_key,
        file,
    } = cmd;
    let sealer = Arc::new(Sealer::from_base64(&secret_key)?);
    let store = store(&db, 2).await?;
    store
        .ready()
        .await
        .context("the database is not ready for this version")?;
    apply_file(
        &api_state(
            store.pool().clone(),
            sealer,
            Running::default(),
            Metrics::new(),
        ),
        &file,
    )
    .await
}

/// Runs the connector runtime and the connect API until Ctrl-C or SIGTERM.
pub async fn run(a: ConnectArgs) -> Result<()> {
    let sealer = Arc::new(Sealer::from_base64(&a.secret_key)?);
    let store = store(&a.db, 16).await?;
    store
        .ready()
        .await
        .context("the database is not ready for this version")?;
    let pool = store.pool().clone();
    let kafka_options = a.kafka.resolve()?;
    collect_connect::dlq::ensure_topic(&a.pipeline.brokers, &a.dead_letter_topic, &kafka_options)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut settings = Settings::new(
        &a.pipeline.brokers,
        &a.pipeline.registry_url,
        &a.pipeline.responses_topic,
        &a.pipeline.forms_topic,
    );
    settings.batch_max_events = a.batch_max_events.max(1);
    settings.batch_ceiling_events = a.batch_ceiling_events.max(1);
    settings.batch_max_wait = Duration::from_millis(a.batch_max_wait_ms);
    settings.consumer_options = kafka_options.clone();
    settings.memory_budget_bytes = a.memory_budget_mb.clamp(16, 1 << 20) * 1024 * 1024;
    settings.catch_up_readers = a.catch_up_readers.clamp(1, 16);
    let metrics = Metrics::new();
    let settings = Arc::new(settings);
    let decoder = Arc::new(Decoder::new(&a.pipeline.registry_url));
    let shared = Shared {
        feed: Feed::new(settings.clone(), decoder.clone(), metrics.clone())
            .map_err(anyhow::Error::msg)?,
        settings,
        decoder,
        dead_letters: DeadLetters::new(&a.pipeline.brokers, &a.dead_letter_topic, &kafka_options)?,
        metrics: metrics.clone(),
        // Third parties count quotas per user, project or sender, whatever process calls:
        // the limits are kept in Postgres, shared by every `collect connect`.
        limiter: if a.local_limits {
            Limiter::new()
        } else {
            Limiter::shared(pool.clone())
        },
        db: pool.clone(),
    };
    let running = Running::default();
    let state = api_state(
        pool.clone(),
        sealer.clone(),
        running.clone(),
        metrics.clone(),
    );
    if let Some(file) = &a.integrations_file {
        apply_file(&state, file).await?;
    }
    let listener = TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "connect API listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut http_stop = stopped.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, collect_connect::api::router(state))
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let connect = Connect {
        store: IntegrationStore::new(pool),
        sealer,
        kinds: Arc::new(Installed),
        shared,
        capacity: a.capacity,
        poll: Duration::from_millis(a.poll_ms.max(100)),
        running,
        database_url: a.db.database_url.clone(),
    };
    supervisor::run(connect, stopped)
        .await
        .map_err(anyhow::Error::msg)?;
    let _ = http.await;
    Ok(())
}
