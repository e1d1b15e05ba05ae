//! Integrations in Postgres (migration `0004_connect`).

use chrono::{DateTime, Utc};
use collect_model::FieldError;
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

/// The status reason of an integration paused through the API: replacing the integration
/// keeps that pause, while a pause the runtime made (a fatal error) is lifted by a new
/// configuration or new credentials.
pub const OPERATOR_PAUSE: &str = "paused by an operator";

impl Integration {
    /// What it is for, per form ([`crate::SinkContext::purpose`]): its name, or its id.
    pub fn purpose(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.id.to_string())
    }

    /// The sealed credentials (open them with [`crate::crypto::Sealer::open`]).
    pub fn sealed_credentials(&self) -> Option<&Vec<u8>> {
        self.sealed.as_ref()
    }
}

/// Errors of the integration store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unknown (or another organization's) integration or form.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The input does not fit.
    #[error("invalid: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The request conflicts with what is stored.
    #[error("{message}")]
    Conflict {
        /// Stable, machine-readable reason.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
    /// Postgres failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No connection.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// Where an integration starts reading its form's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The form's whole history (a mirror, such as a sheet).
    History,
    /// Responses submitted from the integration's creation on (a notification, such as an
    /// SMS).
    Creation,
    /// Responses submitted from this time on.
    At(DateTime<Utc>),
}

impl Start {
    /// Parses `history`, `creation` or an RFC 3339 time.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "history" => Ok(Start::History),
            "creation" => Ok(Start::Creation),
            t => DateTime::parse_from_rfc3339(t)
                .map(|t| Start::At(t.with_timezone(&Utc)))
                .map_err(|_| {
                    format!(
                        "start must be \"history\", \"creation\" or an RFC 3339 time, not '{t}'"
                    )
                }),
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Start::History => "history",
            Start::Creation => "creation",
            Start::At(_) => "at",
        }
    }

    fn at(self) -> Option<DateTime<Utc>> {
        match self {
            Start::At(t) => Some(t),
            _ => None,
        }
    }
}

/// An integration as stored. Credentials stay sealed here and are never serialized.
#[derive(Debug, Clone, Serialize)]
pub struct Integration {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub org_id: Uuid,
    /// The form it follows.
    pub form_id: Uuid,
    /// Kind (`sheets`, `sms`, ...).
    pub kind: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// The kind's configuration.
    pub config: Value,
    /// `active`, `paused` or `deleted`.
    pub status: String,
    /// Why it is paused, when it is.
    pub status_reason: Option<String>,
    /// Whether credentials are stored.
    pub has_credentials: bool,
    /// `history`, `creation` or `at` (see [`Start`]).
    pub start_mode: String,
    /// Responses submitted before this time are never delivered to the sink (`None`: the
    /// whole history).
    pub start_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub(crate) sealed: Option<Vec<u8>>,
}

const COLUMNS: &str = "id, org_id, form_id, kind, name, config, status, status_reason, credentials, created_at, updated_at, start_mode, start_at";

fn integration(r: &Row) -> Integration {
    let sealed: Option<Vec<u8>> = r.get(8);
    Integration {
        id: r.get(0),
        org_id: r.get(1),
        form_id: r.get(2),
        kind: r.get(3),
        name: r.get(4),
        config: r.get(5),
        status: r.get(6),
        status_reason: r.get(7),
        has_credentials: sealed.is_some(),
        sealed,
        created_at: r.get(9),
        updated_at: r.get(10),
        start_mode: r.get(11),
        start_at: r.get(12),
    }
}

/// A new integration, validated by its kind.
pub struct NewIntegration<'a> {
    /// Owner.
    pub org_id: Uuid,
    /// Form.
    pub form_id: Uuid,
    /// Kind.
    pub kind: &'a str,
    /// Name.
    pub name: Option<&'a str>,
    /// Configuration.
    pub config: &'a Value,
    /// Sealed credentials.
    pub sealed: Option<Vec<u8>>,
    /// Where it starts; `None` keeps the start of the integration it replaces, or takes
    /// `default_start` for a new one.
    pub start: Option<Start>,
    /// The kind's default start ([`crate::Kind::DEFAULT_START`]).
    pub default_start: Start,
}

/// Access to the `integrations` table.
#[derive(Clone)]
pub struct IntegrationStore {
    pool: Pool,
}

/// Integrations, and the XOR of their rows' hashes (see [`IntegrationStore::fingerprint`]).
pub type Fingerprint = (i64, i64);

impl IntegrationStore {
    /// Wraps a pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Creates an integration on a form of the organization; with `name` set and an
    /// integration of that name existing, replaces its kind, form, config and credentials
    /// instead (declarative files). Returns it and whether it was created.
    pub async fn upsert(&self, n: NewIntegration<'_>) -> Result<(Integration, bool), StoreError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let owned = tx
            .query_opt(
                "SELECT 1 FROM forms WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL",
                &[&n.form_id, &n.org_id],
            )
            .await?
            .is_some();
        if !owned {
            return Err(StoreError::NotFound("form"));
        }
        let existing: Option<(Uuid, Uuid, String)> = match n.name {
            Some(name) => tx
                .query_opt(
                    "SELECT id, form_id, kind FROM integrations WHERE org_id = $1 AND name = $2 AND status <> 'deleted' FOR UPDATE",
                    &[&n.org_id, &name],
                )
                .await?
                .map(|r| (r.get(0), r.get(1), r.get(2))),
            None => None,
        };
        // An integration's offsets and its sink's state belong to one form and one kind:
        // moving it would mix two forms in one destination.
        if let Some((_, form, kind)) = &existing
            && (*form != n.form_id || kind != n.kind)
        {
            return Err(StoreError::Conflict {
                code: "integration_exists",
                message: format!(
                    "integration '{}' is a {kind} integration of form {form}; its form and kind cannot change (delete it, or use another name)",
                    n.name.unwrap_or_default()
                ),
            });
        }
        let existing = existing.map(|(id, _, _)| id);
        let start = n.start.unwrap_or(n.default_start);
        let row = match existing {
            Some(id) => {
                tx.query_one(
                    &format!(
                        "UPDATE integrations SET form_id = $2, kind = $3, config = $4, credentials = $5, \
                         updated_at = now(), \
                         status = CASE WHEN status = 'paused' AND status_reason IS DISTINCT FROM '{OPERATOR_PAUSE}' \
                                       THEN 'active' ELSE status END, \
                         status_reason = CASE WHEN status = 'paused' AND status_reason IS DISTINCT FROM '{OPERATOR_PAUSE}' \
                                       THEN NULL ELSE status_reason END, \
                         start_mode = coalesce($6, start_mode), \
                         start_at = CASE $6 WHEN 'history' THEN NULL WHEN 'creation' THEN created_at \
                                    WHEN 'at' THEN $7 ELSE start_at END \
                         WHERE id = $1 RETURNING {COLUMNS}"
                    ),
                    &[
                        &id,
                        &n.form_id,
                        &n.kind,
                        n.config,
                        &n.sealed,
                        &n.start.map(Start::mode),
                        &n.start.and_then(Start::at),
                    ],
                )
                .await?
            }
            None => {
                tx.query_one(
                    &format!(
                        "INSERT INTO integrations (id, org_id, form_id, kind, name, config, credentials, \
                         start_mode, start_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                                 CASE $8 WHEN 'creation' THEN now() WHEN 'at' THEN $9 END) \
                         RETURNING {COLUMNS}"
                    ),
                    &[
                        &Uuid::now_v7(),
                        &n.org_id,
                        &n.form_id,
                        &n.kind,
                        &n.name,
                        n.config,
                        &n.sealed,
                        &start.mode(),
                        &start.at(),
                    ],
                )
                .await?
            }
        };
        tx.commit().await?;
        Ok((integration(&row), existing.is_none()))
    }

    /// The organization's integrations (not deleted), oldest first.
    pub async fn list(&self, org: Uuid) -> Result<Vec<Integration>, StoreError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &format!("SELECT {COLUMNS} FROM integrations WHERE org_id = $1 AND status <> 'deleted' ORDER BY id"),
                &[&org],
            )
            .await?;
        Ok(rows.iter().map(integration).collect())
    }

    /// One integration of the organization.
    pub async fn get(&self, org: Uuid, id: Uuid) -> Result<Integration, StoreError> {
        let c = self.pool.get().await?;
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM integrations WHERE id = $1 AND org_id = $2 AND status <> 'deleted'"),
            &[&id, &org],
        )
        .await?
        .map(|r| integration(&r))
        .ok_or(StoreError::NotFound("integration"))
    }

    /// One integration of any organization (for callbacks, which the kind authenticates).
    pub async fn get_any(&self, id: Uuid) -> Result<Integration, StoreError> {
        let c = self.pool.get().await?;
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM integrations WHERE id = $1 AND status <> 'deleted'"),
            &[&id],
        )
        .await?
        .map(|r| integration(&r))
        .ok_or(StoreError::NotFound("integration"))
    }

    /// Every integration not deleted, of every organization (for operators' tools).
    pub async fn all(&self) -> Result<Vec<Integration>, StoreError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM integrations WHERE status <> 'deleted' ORDER BY id"
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(integration).collect())
    }

    /// Every active integration (for the supervisor).
    pub async fn active(&self) -> Result<Vec<Integration>, StoreError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &format!("SELECT {COLUMNS} FROM integrations WHERE status = 'active' ORDER BY id"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(integration).collect())
    }

    /// What changes whenever an integration is created, replaced, paused, resumed or
    /// deleted: the number of integrations and the XOR of a hash of each one's id, status
    /// and `updated_at` (not their latest `updated_at`: `now()` is a transaction's start, so
    /// a change that commits after a newer one would not move the latest). The supervisor
    /// reads the whole table only when it changed (or when it has work to do).
    pub async fn fingerprint(&self) -> Result<Fingerprint, StoreError> {
        let c = self.pool.get().await?;
        let r = c
            .query_one(
                "SELECT count(*), coalesce(bit_xor(hashtextextended(\
                 id::text || ':' || status || ':' || updated_at::text, 0)), 0) \
                 FROM integrations",
                &[],
            )
            .await?;
        Ok((r.get(0), r.get(1)))
    }

    /// Id, kind and status of every integration not deleted (for the state metric).
    pub async fn statuses(&self) -> Result<Vec<(Uuid, String, String)>, StoreError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT id, kind, status FROM integrations WHERE status <> 'deleted'",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Sets an integration's status (any organization: the runtime pauses on fatal errors).
    pub async fn set_status(
        &self,
        id: Uuid,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE integrations SET status = $2, status_reason = $3, updated_at = now() WHERE id = $1 AND status <> 'deleted'",
            &[&id, &status, &reason],
        )
        .await?;
        Ok(())
    }

    /// Pauses, resumes or deletes an integration of the organization.
    pub async fn set_status_of(
        &self,
        org: Uuid,
        id: Uuid,
        status: &str,
        reason: Option<&str>,
    ) -> Result<Integration, StoreError> {
        let c = self.pool.get().await?;
        c.query_opt(
            &format!(
                "UPDATE integrations SET status = $3, status_reason = $4, updated_at = now() \
                 WHERE id = $1 AND org_id = $2 AND status <> 'deleted' RETURNING {COLUMNS}"
            ),
            &[&id, &org, &status, &reason],
        )
        .await?
        .map(|r| integration(&r))
        .ok_or(StoreError::NotFound("integration"))
    }
}
