//! The ledger (migrations `0006_sms`, `0009_integration_start`): one row per (form, purpose,
//! response), claimed before the provider is called. The purpose is the integration's name
//! (or its id when it has none): an integration deleted and attached again under the same
//! name finds the messages its predecessor sent and sends nothing twice.

use chrono::{DateTime, Utc};
use collect_connect::SinkError;
use deadpool_postgres::Pool;
use uuid::Uuid;

/// What the ledger knows of a response's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `claimed`, `sent`, `failed`, `ambiguous` or `skipped` (deleted before it was texted).
    pub state: String,
    /// Recipient.
    pub to: String,
    /// Text.
    pub body: String,
    /// The provider's id, once sent.
    pub sid: Option<String>,
    /// Why it failed or is ambiguous.
    pub error: Option<String>,
    /// When it was (last) claimed.
    pub claimed_at: DateTime<Utc>,
}

/// Statuses that end a message's life (Twilio's Message resource): never overwritten.
const FINAL: &str = "('delivered', 'undelivered', 'failed', 'read', 'canceled')";

fn db(e: impl std::fmt::Display) -> SinkError {
    SinkError::retryable(format!("ledger: {e}"))
}

/// The ledger of one integration: its form and purpose.
#[derive(Clone)]
pub struct Ledger {
    pool: Pool,
    integration: Uuid,
    form: Uuid,
    purpose: String,
    generation: i64,
}

impl Ledger {
    /// The ledger `integration` writes to: the one of its `form` and `purpose`.
    pub fn new(pool: Pool, integration: Uuid, form: Uuid, purpose: String) -> Self {
        Self {
            pool,
            integration,
            form,
            purpose,
            generation: 0,
        }
    }

    /// The ledger written under lease generation `generation`: claims are fenced with it
    /// (`collect_connect::lease`), so a writer that lost the lease claims nothing.
    pub fn fenced(mut self, generation: i64) -> Self {
        self.generation = generation;
        self
    }

    /// The entry of `response`, if any.
    pub async fn get(&self, response: Uuid) -> Result<Option<Entry>, SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        let row = c
            .query_opt(
                "SELECT state, to_number, body, provider_sid, error, claimed_at FROM sms_ledger \
                 WHERE form_id = $1 AND purpose = $2 AND response_id = $3",
                &[&self.form, &self.purpose, &response],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| Entry {
            state: r.get(0),
            to: r.get(1),
            body: r.get(2),
            sid: r.get(3),
            error: r.get(4),
            claimed_at: r.get(5),
        }))
    }

    /// Claims `response` for a send; false if it already has an entry.
    pub async fn claim(&self, response: Uuid, to: &str, body: &str) -> Result<bool, SinkError> {
        self.insert_fenced(response, "claimed", to, body, None)
            .await
    }

    /// Records that `response` was deleted before this integration texted it (state
    /// `skipped`): it never will be. Fenced like a claim, so that a writer that lost the
    /// lease, ahead of the one holding it, cannot keep the response from being texted.
    /// Returns false when the response already has an entry (texted, claimed or refused
    /// before its deletion), which stays as it is.
    pub async fn skip_deleted(&self, response: Uuid) -> Result<bool, SinkError> {
        self.insert_fenced(
            response,
            "skipped",
            "",
            "",
            Some("deleted before it was texted"),
        )
        .await
    }

    /// Inserts the entry of `response` if it has none, under the lease (see [`Self::fenced`]);
    /// returns whether it did.
    async fn insert_fenced(
        &self,
        response: Uuid,
        state: &str,
        to: &str,
        body: &str,
        error: Option<&str>,
    ) -> Result<bool, SinkError> {
        let mut c = self.pool.get().await.map_err(db)?;
        let tx = c.transaction().await.map_err(db)?;
        collect_connect::lease::check(&tx, self.integration, self.generation).await?;
        let n = tx
            .execute(
                "INSERT INTO sms_ledger (integration_id, response_id, form_id, purpose, state, \
                 to_number, body, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT DO NOTHING",
                &[
                    &self.integration,
                    &response,
                    &self.form,
                    &self.purpose,
                    &state,
                    &to,
                    &body,
                    &error,
                ],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n == 1)
    }

    /// Records a refusal for good, without a claim before (an invalid number).
    pub async fn fail_unclaimed(
        &self,
        response: Uuid,
        to: &str,
        error: &str,
    ) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "INSERT INTO sms_ledger (integration_id, response_id, form_id, purpose, state, \
             to_number, body, error) VALUES ($1, $2, $3, $4, 'failed', $5, '', $6) \
             ON CONFLICT DO NOTHING",
            &[
                &self.integration,
                &response,
                &self.form,
                &self.purpose,
                &to,
                &error,
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Moves an entry to `state`.
    pub async fn set(
        &self,
        response: Uuid,
        state: &str,
        sid: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "UPDATE sms_ledger SET state = $4, provider_sid = COALESCE($5, provider_sid), error = $6, \
             updated_at = now() WHERE form_id = $1 AND purpose = $2 AND response_id = $3",
            &[&self.form, &self.purpose, &response, &state, &sid, &error],
        )
        .await
        .map_err(db)?;
        if let Some(sid) = sid {
            // A report that came before the SID was known is applied now (a final one wins).
            c.execute(
                &format!(
                    "WITH p AS (DELETE FROM sms_delivery_pending WHERE integration_id = $1 \
                     AND provider_sid = $2 RETURNING status, received_at) \
                     UPDATE sms_ledger l SET delivery_status = p.status, delivery_at = p.received_at \
                     FROM p WHERE l.form_id = $3 AND l.purpose = $4 AND l.provider_sid = $2 \
                     AND (l.delivery_status IS NULL OR l.delivery_status NOT IN {FINAL})"
                ),
                &[&self.integration, &sid, &self.form, &self.purpose],
            )
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    /// Counts one more search of the provider's list for an unresolved send; returns how
    /// many there were.
    pub async fn looked(&self, response: Uuid) -> Result<i32, SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        let row = c
            .query_opt(
                "UPDATE sms_ledger SET lookups = lookups + 1 \
                 WHERE form_id = $1 AND purpose = $2 AND response_id = $3 RETURNING lookups",
                &[&self.form, &self.purpose, &response],
            )
            .await
            .map_err(db)?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    /// Claims an entry again for a new attempt (after the provider's list showed the last
    /// one was never accepted).
    /// Fenced and conditional: only the writer holding the lease, and only if the entry is
    /// still the unresolved one it looked at (`seen_claim`), gets it; returns whether it did
    /// (two writers reconciling the same entry never both send).
    pub async fn reclaim(
        &self,
        response: Uuid,
        seen_claim: DateTime<Utc>,
    ) -> Result<bool, SinkError> {
        let mut c = self.pool.get().await.map_err(db)?;
        let tx = c.transaction().await.map_err(db)?;
        collect_connect::lease::check(&tx, self.integration, self.generation).await?;
        let n = tx
            .execute(
                "UPDATE sms_ledger SET state = 'claimed', attempts = attempts + 1, claimed_at = now(), \
                 lookups = 0, updated_at = now() WHERE form_id = $1 AND purpose = $2 AND response_id = $3 \
                 AND state IN ('claimed', 'ambiguous') AND claimed_at = $4",
                &[&self.form, &self.purpose, &response, &seen_claim],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(n == 1)
    }

    /// Forgets the entry of `response` if it is still in `state` (`failed` or `skipped`), so
    /// that a re-driven event is tried again.
    pub async fn forget(&self, response: Uuid, state: &str) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "DELETE FROM sms_ledger WHERE form_id = $1 AND purpose = $2 AND response_id = $3 \
             AND state = $4",
            &[&self.form, &self.purpose, &response, &state],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Forgets a claim whose send was refused before anything happened (rate limited).
    pub async fn release(&self, response: Uuid) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "DELETE FROM sms_ledger WHERE form_id = $1 AND purpose = $2 AND response_id = $3 \
             AND state = 'claimed'",
            &[&self.form, &self.purpose, &response],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Records a delivery report for the message `sid`; a final status is not overwritten
    /// by a late report of an earlier one. A report for a SID the ledger does not know yet
    /// (the provider's answer to the send still in flight, or lost: the send is reconciled
    /// later) is kept and applied when the SID is recorded. Returns whether the ledger
    /// already knew the SID.
    pub async fn delivery(&self, sid: &str, status: &str) -> Result<bool, String> {
        let c = self.pool.get().await.map_err(|e| e.to_string())?;
        let n = c
            .execute(
                &format!(
                    "UPDATE sms_ledger SET delivery_status = CASE \
                     WHEN delivery_status IS NULL OR delivery_status NOT IN {FINAL} THEN $3 \
                     ELSE delivery_status END, \
                     delivery_at = CASE WHEN delivery_status IS NULL OR delivery_status NOT IN {FINAL} \
                     THEN now() ELSE delivery_at END \
                     WHERE integration_id = $1 AND provider_sid = $2"
                ),
                &[&self.integration, &sid, &status],
            )
            .await
            .map_err(|e| e.to_string())?;
        if n > 0 {
            return Ok(true);
        }
        c.execute(
            "DELETE FROM sms_delivery_pending WHERE received_at < now() - interval '7 days'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
        c.execute(
            &format!(
                "INSERT INTO sms_delivery_pending (integration_id, provider_sid, status) \
                 VALUES ($1, $2, $3) ON CONFLICT (integration_id, provider_sid) DO UPDATE \
                 SET status = CASE WHEN sms_delivery_pending.status IN {FINAL} \
                 THEN sms_delivery_pending.status ELSE EXCLUDED.status END, received_at = now()"
            ),
            &[&self.integration, &sid, &status],
        )
        .await
        .map_err(|e| e.to_string())?;
        // The SID may have been recorded between the UPDATE above and this INSERT (the send's
        // answer arriving meanwhile): apply the report now if so.
        c.execute(
            &format!(
                "WITH p AS (DELETE FROM sms_delivery_pending d WHERE d.integration_id = $1 \
                 AND d.provider_sid = $2 AND EXISTS (SELECT 1 FROM sms_ledger l \
                 WHERE l.integration_id = $1 AND l.provider_sid = $2) RETURNING status, received_at) \
                 UPDATE sms_ledger l SET delivery_status = p.status, delivery_at = p.received_at \
                 FROM p WHERE l.integration_id = $1 AND l.provider_sid = $2 \
                 AND (l.delivery_status IS NULL OR l.delivery_status NOT IN {FINAL})"
            ),
            &[&self.integration, &sid],
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(false)
    }

    /// Provider ids of messages already accounted for to `to`, by any integration (so that
    /// reconciliation never takes another response's, or another integration's, message for
    /// this one).
    pub async fn sids_to(&self, to: &str, since: DateTime<Utc>) -> Result<Vec<String>, SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        let rows = c
            .query(
                "SELECT provider_sid FROM sms_ledger WHERE to_number = $1 \
                 AND provider_sid IS NOT NULL AND updated_at >= $2",
                &[&to, &since],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
