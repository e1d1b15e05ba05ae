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

mod cdc;
mod connect;
mod dead_letters;
mod emulate;
mod kafka_options;
mod kinds;
mod ops;

#[derive(clap::Args)]
pub(crate) struct Db {
    /// Postgres URL, e.g. postgres://user@127.0.0.1:5432/collect
    #[arg(long, env = "COLLECT_DATABASE_URL")]
    pub(crate) database_url: String,
}

/// Where the events live: the registry, the brokers and the two event topics.
#[derive(clap::Args)]
pub(crate) struct Pipeline {
    /// Schema registry base URL (Confluent API).
    #[arg(long, env = "COLLECT_REGISTRY_URL")]
    pub(crate) registry_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "COLLECT_KAFKA_BROKERS")]
    pub(crate) brokers: String,
    /// Topic of response events.
    #[arg(
        long,
        env = "COLLECT_RESPONSES_TOPIC",
        default_value = "collect.responses"
    )]
    pub(crate) responses_topic: String,
    /// Topic of form and question events.
    #[arg(long, env = "COLLECT_FORMS_TOPIC", default_value = "collect.forms")]
    pub(crate) forms_topic: String,
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
        /// Largest response document accepted, in bytes of JSON (every answer of a response
        /// together). Keep it well under the topics' message size (the reader's
        /// --max-message-bytes, 1,000,000 by default): each event carries the whole document.
        #[arg(
            long,
            env = "COLLECT_API_MAX_RESPONSE_BYTES",
            default_value_t = collect_store::DEFAULT_MAX_DOCUMENT_BYTES
        )]
        max_response_bytes: usize,
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
    Cdc(Box<cdc::CdcArgs>),
    /// Run the connector runtime and the connect API.
    Connect(Box<connect::ConnectArgs>),
    /// Manage integrations declaratively.
    Integrations {
        #[command(subcommand)]
        command: connect::IntegrationsCommand,
    },
    /// Say how the pipeline is doing: the reader's slot, every integration's state and
    /// lag, dead letters.
    Status(Box<ops::StatusArgs>),
    /// Make an integration read its form's events again from the oldest the topics hold
    /// (backfill a new sheet), following its progress.
    Replay(Box<ops::ReplayArgs>),
    /// List the events connectors could not write, and re-drive them after a fix.
    DeadLetters {
        #[command(subcommand)]
        command: dead_letters::DeadLettersCommand,
    },
    /// Re-emit a form's current state from Postgres (when the topics no longer hold what a
    /// new integration needs).
    Snapshot(Box<ops::SnapshotArgs>),
    /// Run an emulator of a third party.
    Emulate {
        #[command(subcommand)]
        command: emulate::EmulateCommand,
    },
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

impl Command {
    /// The OpenTelemetry service name of the process (unless `OTEL_SERVICE_NAME` says).
    fn service_name(&self) -> &'static str {
        match self {
            Command::Api { .. } => "collect-api",
            Command::Registry { .. } => "collect-registry",
            Command::Cdc(_) => "collect-cdc",
            Command::Connect(_) => "collect-connect",
            Command::Emulate { .. } => "collect-emulator",
            _ => "collect-cli",
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
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

pub(crate) async fn store(db: &Db, max_connections: usize) -> Result<Store> {
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

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Api {
            db,
            listen,
            db_connections,
            migrate: apply,
            max_response_bytes,
        } => {
            if apply {
                migrate(&db).await?;
            }
            let store = store(&db, db_connections)
                .await?
                .with_max_document_bytes(max_response_bytes);
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
        Command::Cdc(args) => cdc::run(*args).await,
        Command::Connect(args) => connect::run(*args).await,
        Command::Integrations { command } => connect::integrations(command).await,
        Command::Emulate { command } => emulate::run(command).await,
        Command::Status(args) => ops::status(*args).await,
        Command::DeadLetters { command } => dead_letters::run(command).await,
        Command::Replay(args) => ops::replay(*args).await,
        Command::Snapshot(args) => ops::snapshot(*args).await,
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

fn main() -> std::process::ExitCode {
    // Blocking calls (librdkafka's metadata and watermark requests, DNS) run on a bounded
    // pool: a thousand integrations starting at once must not make a thousand threads.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_main())
}

async fn run_main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Text => collect_telemetry::LogFormat::Text,
        LogFormat::Json => collect_telemetry::LogFormat::Json,
    };
    let telemetry = collect_telemetry::init(cli.command.service_name(), format);
    let code = match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // Export the spans still queued before the process ends.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
