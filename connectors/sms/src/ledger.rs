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
    /// `claimed`, `sent`, `failed` or `ambiguous`.
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
}

impl Ledger {
    /// The ledger `integration` writes to: the one of its `form` and `purpose`.
    pub fn new(pool: Pool, integration: Uuid, form: Uuid, purpose: String) -> Self {
        Self {
            pool,
            integration,
            form,
            purpose,
        }
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
        let c = self.pool.get().await.map_err(db)?;
        let n = c
            .execute(
                "INSERT INTO sms_ledger (integration_id, response_id, form_id, purpose, state, \
                 to_number, body) VALUES ($1, $2, $3, $4, 'claimed', $5, $6) ON CONFLICT DO NOTHING",
                &[&self.integration, &response, &self.form, &self.purpose, &to, &body],
            )
            .await
            .map_err(db)?;
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
        Ok(())
    }

    /// Claims an entry again for a new attempt (after the provider's list showed the last
    /// one was never accepted).
    pub async fn reclaim(&self, response: Uuid) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "UPDATE sms_ledger SET state = 'claimed', attempts = attempts + 1, claimed_at = now(), \
             updated_at = now() WHERE form_id = $1 AND purpose = $2 AND response_id = $3",
            &[&self.form, &self.purpose, &response],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Forgets a refusal for good, so that a re-driven event is tried again.
    pub async fn forget_failure(&self, response: Uuid) -> Result<(), SinkError> {
        let c = self.pool.get().await.map_err(db)?;
        c.execute(
            "DELETE FROM sms_ledger WHERE form_id = $1 AND purpose = $2 AND response_id = $3 \
             AND state = 'failed'",
            &[&self.form, &self.purpose, &response],
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
    /// by a late report of an earlier one. Returns whether a message of this integration
    /// has that id.
    pub async fn delivery(&self, sid: &str, status: &str) -> Result<bool, String> {
        let c = self.pool.get().await.map_err(|e| e.to_string())?;
        let known = c
            .query_opt(
                "SELECT 1 FROM sms_ledger WHERE integration_id = $1 AND provider_sid = $2",
                &[&self.integration, &sid],
            )
            .await
            .map_err(|e| e.to_string())?
            .is_some();
        c.execute(
            "UPDATE sms_ledger SET delivery_status = $3, delivery_at = now() \
             WHERE integration_id = $1 AND provider_sid = $2 \
             AND (delivery_status IS NULL OR delivery_status NOT IN ('delivered', 'undelivered', 'failed', 'read'))",
            &[&self.integration, &sid, &status],
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(known)
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
