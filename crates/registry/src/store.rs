//! The registry's storage in Postgres (tables of migration `0002_registry`).

use deadpool_postgres::{GenericClient, Pool};
use sha2::{Digest, Sha256};

use crate::compat::Level;
use crate::error::RegistryError;

/// One version of a subject.
#[derive(Debug, Clone)]
pub struct SubjectVersion {
    /// Subject.
    pub subject: String,
    /// Version number.
    pub version: i32,
    /// Global schema id.
    pub id: i32,
    /// Compact schema text.
    pub schema: String,
    /// Soft-deleted.
    pub deleted: bool,
}

/// Storage of schemas, subject versions and compatibility settings.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

fn fingerprint(schema_type: &str, text: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(schema_type.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.finalize().to_vec()
}

const VERSION_COLUMNS: &str = "v.subject, v.version, v.schema_id, s.schema_text, v.deleted";

fn version(row: &tokio_postgres::Row) -> SubjectVersion {
    SubjectVersion {
        subject: row.get(0),
        version: row.get(1),
        id: row.get(2),
        schema: row.get(3),
        deleted: row.get(4),
    }
}

impl Store {
    /// Wraps a pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The schema with global id `id`.
    pub async fn schema(&self, id: i32) -> Result<Option<String>, RegistryError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT schema_text FROM registry_schemas WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The (subject, version) pairs that use schema `id`.
    pub async fn versions_of_schema(&self, id: i32) -> Result<Vec<(String, i32)>, RegistryError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT subject, version FROM registry_versions WHERE schema_id = $1 AND NOT deleted \
                 ORDER BY subject, version",
                &[&id],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Subjects with at least one version (live ones, or all with `deleted`).
    pub async fn subjects(&self, deleted: bool) -> Result<Vec<String>, RegistryError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT DISTINCT subject FROM registry_versions WHERE $1 OR NOT deleted ORDER BY subject",
                &[&deleted],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A subject's versions, oldest first (live ones, or all with `deleted`).
    pub async fn versions(
        &self,
        subject: &str,
        deleted: bool,
    ) -> Result<Vec<SubjectVersion>, RegistryError> {
        let c = self.pool.get().await?;
        versions(&c, subject, deleted).await
    }

    /// Registers `text` (already validated, compact) under `subject` after checking it
    /// against the subject's level; returns the global id. Registering a schema the subject
    /// already has returns its id and writes nothing.
    pub async fn register(
        &self,
        subject: &str,
        schema_type: &str,
        text: &str,
        check: impl FnOnce(Level, &[SubjectVersion]) -> Vec<String>,
    ) -> Result<i32, RegistryError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('registry:' || $1))",
            &[&subject],
        )
        .await?;
        let existing = versions(&tx, subject, false).await?;
        if let Some(v) = existing.iter().find(|v| v.schema == text) {
            return Ok(v.id);
        }
        let level = level(&tx, subject).await?;
        let problems = check(level, &existing);
        if !problems.is_empty() {
            return Err(RegistryError::Incompatible(problems.join("; ")));
        }
        let fp = fingerprint(schema_type, text);
        tx.execute(
            "INSERT INTO registry_schemas (schema_type, schema_text, fingerprint) VALUES ($1, $2, $3) \
             ON CONFLICT (fingerprint) DO NOTHING",
            &[&schema_type, &text, &fp],
        )
        .await?;
        let id: i32 = tx
            .query_one(
                "SELECT id FROM registry_schemas WHERE fingerprint = $1",
                &[&fp],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO registry_versions (subject, version, schema_id) \
             SELECT $1, coalesce(max(version), 0) + 1, $2 FROM registry_versions WHERE subject = $1",
            &[&subject, &id],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Soft-deletes (or, if already soft-deleted and `permanent`, removes) versions of a
    /// subject: all of them with `version = None`. Returns the versions affected.
    pub async fn delete(
        &self,
        subject: &str,
        version: Option<i32>,
        permanent: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('registry:' || $1))",
            &[&subject],
        )
        .await?;
        let all = versions(&tx, subject, true).await?;
        if all.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        let targets: Vec<&SubjectVersion> = match version {
            None => all.iter().filter(|v| permanent || !v.deleted).collect(),
            Some(n) => {
                let v = all
                    .iter()
                    .find(|v| v.version == n && (permanent || !v.deleted))
                    .ok_or(RegistryError::VersionNotFound(n))?;
                vec![v]
            }
        };
        if permanent && targets.iter().any(|v| !v.deleted) {
            return Err(RegistryError::NotSoftDeleted(subject.to_string()));
        }
        let numbers: Vec<i32> = targets.iter().map(|v| v.version).collect();
        if targets.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        if permanent {
            tx.execute(
                "DELETE FROM registry_versions WHERE subject = $1 AND version = ANY($2)",
                &[&subject, &numbers],
            )
            .await?;
        } else {
            tx.execute(
                "UPDATE registry_versions SET deleted = true WHERE subject = $1 AND version = ANY($2)",
                &[&subject, &numbers],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(numbers)
    }

    /// The compatibility level of `subject` (`None` for the global one): its own setting, or
    /// `None` if it has none.
    pub async fn config(&self, subject: Option<&str>) -> Result<Option<Level>, RegistryError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT compatibility FROM registry_config WHERE subject = $1",
                &[&subject.unwrap_or("")],
            )
            .await?;
        Ok(row.and_then(|r| Level::parse(r.get(0))))
    }

    /// Sets the compatibility level of `subject` (`None`: global).
    pub async fn set_config(
        &self,
        subject: Option<&str>,
        level: Level,
    ) -> Result<(), RegistryError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO registry_config (subject, compatibility) VALUES ($1, $2) \
             ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
            &[&subject.unwrap_or(""), &level.as_str()],
        )
        .await?;
        Ok(())
    }

    /// Removes a subject's own level; returns the one it had.
    pub async fn delete_config(&self, subject: &str) -> Result<Option<Level>, RegistryError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "DELETE FROM registry_config WHERE subject = $1 AND subject <> '' RETURNING compatibility",
                &[&subject],
            )
            .await?;
        Ok(row.and_then(|r| Level::parse(r.get(0))))
    }

    /// Checks that Postgres answers.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let c = self.pool.get().await?;
        c.query_one("SELECT 1 FROM registry_config LIMIT 1", &[])
            .await?;
        Ok(())
    }
}

async fn versions(
    c: &impl GenericClient,
    subject: &str,
    deleted: bool,
) -> Result<Vec<SubjectVersion>, RegistryError> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id \
         WHERE v.subject = $1 AND ($2 OR NOT v.deleted) ORDER BY v.version"
    );
    Ok(c.query(&sql, &[&subject, &deleted])
        .await?
        .iter()
        .map(version)
        .collect())
}

/// The level that applies to `subject`: its own, else the global one, else BACKWARD.
async fn level(c: &impl GenericClient, subject: &str) -> Result<Level, RegistryError> {
    let rows = c
        .query(
            "SELECT compatibility FROM registry_config WHERE subject IN ($1, '') ORDER BY subject DESC",
            &[&subject],
        )
        .await?;
    Ok(rows
        .first()
        .and_then(|r| Level::parse(r.get(0)))
        .unwrap_or(Level::Backward))
}
