//! Postgres access for Collect: the migration runner and the transactions behind the forms API.
//!
//! Validation against a form's current definition happens here, inside the transaction or
//! statement that writes, so that a concurrent change to the form cannot slip between the
//! check and the write.

mod cache;
mod forms;
pub mod migrate;
mod orgs;
pub mod pg;
mod responses;

use std::time::Duration;

use collect_model::FieldError;
use deadpool_postgres::{ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts};

pub use forms::{Form, FormSummary};
pub use orgs::NewOrg;
pub use responses::{NewResponse, Response, ResponsePatch, Submitted};

/// Errors of the store, each mapping to one kind of API answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing does not exist, or belongs to another organization.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The input does not fit the current state of the form.
    #[error("validation failed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The request conflicts with existing data.
    #[error("{message}")]
    Conflict {
        /// Stable, machine-readable reason.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
    /// Postgres refused or failed.
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool in time.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A stored value could not be decoded (a bug or a manual edit of the database).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The response's answers would exceed the largest document the pipeline carries.
    #[error("the response's answers would take {bytes} bytes as JSON; the limit is {limit} bytes")]
    TooLarge {
        /// Size of the document, in bytes of JSON.
        bytes: usize,
        /// The configured maximum.
        limit: usize,
    },
}

/// Default largest response document, in bytes of JSON: every response event carries the
/// whole document, so this stays well under the topics' message size (1 MiB by default, see
/// the README's size limits).
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Settings of the connection pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections held open.
    pub max_connections: usize,
    /// How long a caller waits for a free connection before failing.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens a pool of connections to `database_url` (a libpq-style URL or key=value string).
pub fn connect_pool(database_url: &str, settings: &PoolSettings) -> Result<Pool, String> {
    let target = pg::target(database_url)?;
    target.rustls()?;
    let manager = deadpool_postgres::Manager::from_config(
        target.config.clone(),
        target.make_tls(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .config(PoolConfig {
            max_size: settings.max_connections,
            timeouts: Timeouts {
                wait: Some(settings.acquire_timeout),
                create: Some(settings.acquire_timeout),
                recycle: Some(settings.acquire_timeout),
            },
            ..PoolConfig::default()
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("cannot build the connection pool: {e}"))
}

/// The store: a connection pool plus the caches that keep the hot paths to one round trip.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    forms: cache::FormCache,
    keys: cache::KeyCache,
    max_document_bytes: usize,
}

impl Store {
    /// Wraps a pool.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            forms: cache::FormCache::new(10_000),
            keys: cache::KeyCache::new(10_000, Duration::from_secs(30)),
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
        }
    }

    /// Sets the largest response document accepted, in bytes of JSON (submissions and edits
    /// that would exceed it are refused and write nothing).
    pub fn with_max_document_bytes(mut self, bytes: usize) -> Self {
        self.max_document_bytes = bytes;
        self
    }

    /// The largest response document accepted, in bytes of JSON.
    pub fn max_document_bytes(&self) -> usize {
        self.max_document_bytes
    }

    /// The underlying pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Checks that Postgres answers and the schema is current.
    pub async fn ready(&self) -> Result<()> {
        let client = self.pool.get().await?;
        migrate::check_current(&client).await
    }
}
