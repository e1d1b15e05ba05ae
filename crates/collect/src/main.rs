//! `collect`: one binary for every part of the platform, one subcommand each.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use collect_store::{PoolSettings, Store, connect_pool};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "collect",
    version,
    about = "Collect: form responses to every integration, none lost, none duplicated"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "COLLECT_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct Db {
    /// Postgres URL, e.g. postgres://user@127.0.0.1:5432/collect
    #[arg(long, env = "COLLECT_DATABASE_URL")]
    database_url: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the forms API.
    Api {
        #[command(flatten)]
        db: Db,
        /// Address to listen on.
        #[arg(long, env = "COLLECT_API_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Most Postgres connections held open.
        #[arg(long, env = "COLLECT_API_DB_CONNECTIONS", default_value_t = 16)]
        db_connections: usize,
        /// Apply pending migrations before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Serve the Confluent-compatible schema registry (storage in Postgres).
    Registry {
        #[command(flatten)]
        db: Db,
        /// Address to listen on.
        #[arg(
            long,
            env = "COLLECT_REGISTRY_LISTEN",
            default_value = "127.0.0.1:8081"
        )]
        listen: String,
        /// Apply pending migrations before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Run the CDC reader: logical replication into Avro events on Kafka.
    Cdc(Box<CdcArgs>),
    /// Apply pending database migrations.
    Migrate {
        #[command(flatten)]
        db: Db,
    },
    /// Manage organizations.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
}

#[derive(clap::Args)]
struct CdcArgs {
    #[command(flatten)]
    db: Db,
    /// Schema registry base URL (Confluent API).
    #[arg(long, env = "COLLECT_REGISTRY_URL")]
    registry_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "COLLECT_KAFKA_BROKERS")]
    brokers: String,
    /// Replication slot.
    #[arg(long, env = "COLLECT_CDC_SLOT", default_value = "collect")]
    slot: String,
    /// Publication.
    #[arg(long, env = "COLLECT_CDC_PUBLICATION", default_value = "collect")]
    publication: String,
    /// Topic of response events.
    #[arg(
        long,
        env = "COLLECT_RESPONSES_TOPIC",
        default_value = "collect.responses"
    )]
    responses_topic: String,
    /// Topic of form and question events.
    #[arg(long, env = "COLLECT_FORMS_TOPIC", default_value = "collect.forms")]
    forms_topic: String,
    /// Topic of changes that cannot become events.
    #[arg(
        long,
        env = "COLLECT_CDC_DEAD_LETTER_TOPIC",
        default_value = "collect.cdc.dlq"
    )]
    dead_letter_topic: String,
    /// Partitions of the topics the reader creates.
    #[arg(long, env = "COLLECT_TOPIC_PARTITIONS", default_value_t = 12)]
    partitions: i32,
    /// Replication factor of the topics the reader creates (-1: broker default).
    #[arg(long, env = "COLLECT_TOPIC_REPLICATION", default_value_t = -1, allow_negative_numbers = true)]
    replication_factor: i32,
    /// Seconds between heartbeats while nothing arrives (0: off).
    #[arg(long, env = "COLLECT_CDC_HEARTBEAT_SECS", default_value_t = 10)]
    heartbeat_secs: u64,
    /// Milliseconds between standby status updates.
    #[arg(long, default_value_t = 1000)]
    status_interval_ms: u64,
    /// Rows per snapshot chunk.
    #[arg(long, default_value_t = 1000)]
    snapshot_chunk: i64,
    /// Seconds librdkafka retries a record before the session restarts.
    #[arg(long, default_value_t = 300)]
    message_timeout_secs: u64,
    /// Most records queued in the producer.
    #[arg(long, default_value_t = 10_000)]
    max_queued: usize,
    /// Compression of produced batches (lz4, zstd, snappy, gzip, none). Tansu spends more
    /// CPU decompressing than it saves: the dev stack uses none.
    #[arg(long, env = "COLLECT_KAFKA_COMPRESSION", default_value = "lz4")]
    compression: String,
    /// Extra librdkafka setting, KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL.
    #[arg(long = "kafka-option", value_parser = parse_key_value)]
    kafka_options: Vec<(String, String)>,
    /// Address of /metrics, /status, /healthz and /readyz.
    #[arg(
        long,
        env = "COLLECT_CDC_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: String,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("'{s}' has an empty key"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organization; prints {"org_id", "api_key"} as JSON.
    Create {
        #[command(flatten)]
        db: Db,
        /// Organization name.
        #[arg(long)]
        name: String,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn store(db: &Db, max_connections: usize) -> Result<Store> {
    let pool = connect_pool(
        &db.database_url,
        &PoolSettings {
            max_connections,
            acquire_timeout: Duration::from_secs(5),
        },
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Store::new(pool))
}

async fn migrate(db: &Db) -> Result<()> {
    let store = store(db, 1).await?;
    let mut client = store.pool().get().await.context("connecting to Postgres")?;
    let applied = collect_store::migrate::run(&mut client).await?;
    tracing::info!(applied = applied.len(), "schema is current");
    Ok(())
}

async fn cdc(a: CdcArgs) -> Result<()> {
    let cfg = collect_cdc::Config {
        database_url: a.db.database_url,
        registry_url: a.registry_url,
        slot: a.slot,
        publication: a.publication,
        kafka: collect_cdc::kafka::KafkaSettings {
            brokers: a.brokers,
            responses_topic: a.responses_topic,
            forms_topic: a.forms_topic,
            dead_letter_topic: a.dead_letter_topic,
            partitions: a.partitions,
            replication_factor: a.replication_factor,
            message_timeout: Duration::from_secs(a.message_timeout_secs),
            max_queued: a.max_queued,
            compression: a.compression,
            extra: a.kafka_options,
        },
        heartbeat: (a.heartbeat_secs > 0).then(|| Duration::from_secs(a.heartbeat_secs)),
        status_interval: Duration::from_millis(a.status_interval_ms.max(10)),
        snapshot_chunk: a.snapshot_chunk,
    };
    cfg.validate()?;
    let metrics = collect_cdc::metrics::Metrics::new(&cfg.slot);
    let listener = TcpListener::bind(&a.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.metrics_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "cdc metrics listening");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut http_stop = stopped.clone();
    let http = tokio::spawn(collect_cdc::metrics::serve(
        listener,
        metrics.clone(),
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    collect_cdc::run(cfg, metrics, stopped).await?;
    let _ = http.await;
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Api {
            db,
            listen,
            db_connections,
            migrate: apply,
        } => {
            if apply {
                migrate(&db).await?;
            }
            let store = store(&db, db_connections).await?;
            store
                .ready()
                .await
                .context("the database is not ready for this version")?;
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, "forms API listening");
            collect_api::serve(
                listener,
                collect_api::AppState::new(store),
                shutdown_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Registry {
            db,
            listen,
            migrate: apply,
        } => {
            if apply {
                migrate(&db).await?;
            }
            let store = store(&db, 8).await?;
            store
                .ready()
                .await
                .context("the database is not ready for this version")?;
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, "schema registry listening");
            collect_registry::serve(listener, store.pool().clone(), shutdown_signal()).await?;
            Ok(())
        }
        Command::Cdc(args) => cdc(*args).await,
        Command::Migrate { db } => migrate(&db).await,
        Command::Org {
            command: OrgCommand::Create { db, name },
        } => {
            let store = store(&db, 1).await?;
            let org = store.create_org(&name).await?;
            println!("{}", serde_json::to_string(&org)?);
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
