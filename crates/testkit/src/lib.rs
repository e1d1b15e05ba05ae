//! The test harness of Collect: real Postgres clusters and Kafka-protocol brokers, started on
//! free ports in scratch directories by the tests themselves and stopped when the test
//! process ends, however it ends.
//!
//! Most tests share one cluster per test process and take a fresh database from it
//! ([`fresh_db`]), already migrated. Fault-injection tests start their own [`PgCluster`] or
//! [`Broker`] so they can kill and restart it.

mod broker;
mod postgres;
pub mod process;
pub mod tls;

use anyhow::{Context, Result};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

pub use broker::{Broker, tansu_bin};
pub use postgres::{PgCluster, PgOptions, pg_bin_dir};

static SHARED_PG: OnceCell<PgCluster> = OnceCell::const_new();
static TEMPLATE: OnceCell<()> = OnceCell::const_new();
static SHARED_BROKER: OnceCell<Broker> = OnceCell::const_new();

const TEMPLATE_DB: &str = "collect_template";

/// The cluster shared by this test process.
pub async fn shared_postgres() -> Result<&'static PgCluster> {
    SHARED_PG
        .get_or_try_init(|| PgCluster::start(PgOptions::default()))
        .await
}

/// The broker shared by this test process.
pub async fn shared_broker() -> Result<&'static Broker> {
    SHARED_BROKER.get_or_try_init(Broker::start).await
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Connection URL.
    pub url: String,
    /// Database name.
    pub name: String,
}

impl TestDb {
    /// A plain connection to this database (the connection task is spawned).
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        connect(&self.url).await
    }
}

/// Connects to `url`, spawning the connection task on the current runtime.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A new, migrated database on the shared cluster, named `t_<uuid>`.
pub async fn fresh_db() -> Result<TestDb> {
    let pg = shared_postgres().await?;
    fresh_db_on(pg).await
}

/// A new, migrated database on `pg`.
pub async fn fresh_db_on(pg: &PgCluster) -> Result<TestDb> {
    let admin = connect(&pg.url("postgres")).await?;
    let shared = SHARED_PG.get().is_some_and(|s| std::ptr::eq(s, pg));
    if shared {
        TEMPLATE
            .get_or_try_init(|| async {
                admin
                    .batch_execute(&format!("CREATE DATABASE {TEMPLATE_DB}"))
                    .await?;
                migrate(&pg.url(TEMPLATE_DB)).await
            })
            .await?;
    }
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    if shared {
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
            .await?;
    } else {
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
    }
    let url = pg.url(&name);
    if !shared {
        migrate(&url).await?;
    }
    Ok(TestDb { url, name })
}

/// Applies the project's migrations to the database at `url`.
pub async fn migrate(url: &str) -> Result<()> {
    let mut client = connect(url).await?;
    collect_store::migrate::run(&mut client).await?;
    Ok(())
}

/// The sum of every series of metric `name` in Prometheus' text exposition format (0 when it
/// has none): a counter or gauge summed over its labels.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
