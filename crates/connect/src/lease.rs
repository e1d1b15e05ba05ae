//! One writer per integration, fenced (migration `0012_lease_generation`). A writer takes the
//! integration's lease (a Postgres advisory lock on a session of its own, see
//! [`crate::supervisor::lease_key`]) and then [`take`]s a new generation; every state write of
//! its sink checks that generation in the same transaction ([`check`]). A writer whose lease
//! session died and whose integration another writer took since can no longer reserve a row
//! or claim a send: it gets a retryable error, and its supervisor stops it.

use uuid::Uuid;

use crate::sink::SinkError;

/// Bumps the integration's lease generation; returns the new one. Call it on the lease
/// session, right after the advisory lock was taken.
pub async fn take(
    c: &impl tokio_postgres::GenericClient,
    integration: Uuid,
) -> Result<i64, tokio_postgres::Error> {
    let row = c
        .query_one(
            "UPDATE integrations SET lease_generation = lease_generation + 1 WHERE id = $1 \
             RETURNING lease_generation",
            &[&integration],
        )
        .await?;
    Ok(row.get(0))
}

/// [`take`] for many integrations in one statement (one commit, so a process that takes a
/// thousand leases at start or at a hand-over does not wait for a thousand commits);
/// returns each one's new generation.
pub async fn take_many(
    c: &impl tokio_postgres::GenericClient,
    integrations: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, tokio_postgres::Error> {
    let rows = c
        .query(
            "UPDATE integrations SET lease_generation = lease_generation + 1 \
             WHERE id = ANY($1) RETURNING id, lease_generation",
            &[&integrations],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Checks, inside the caller's transaction, that `generation` is still the integration's
/// lease generation (the row is locked `FOR SHARE` until the transaction ends, so a new
/// writer's [`take`] waits for it). `Err` (retryable) when another writer took the lease.
pub async fn check(
    c: &impl deadpool_postgres::GenericClient,
    integration: Uuid,
    generation: i64,
) -> Result<(), SinkError> {
    let row = c
        .query_opt(
            "SELECT lease_generation FROM integrations WHERE id = $1 FOR SHARE",
            &[&integration],
        )
        .await
        .map_err(|e| SinkError::retryable(format!("lease check: {e}")))?;
    let current: Option<i64> = row.map(|r| r.get(0));
    if current != Some(generation) {
        return Err(SinkError::retryable(format!(
            "lease lost: integration {integration} is at lease generation {}, this writer holds {generation}",
            current.map_or_else(|| "none".into(), |g| g.to_string())
        )));
    }
    Ok(())
}
