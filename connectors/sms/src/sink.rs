//! The SMS sink: one message per response at most, whatever is redelivered or crashes.

use std::time::Duration;

use chrono::Utc;
use collect_connect::limits::Rate;
use collect_connect::{BatchOutcome, Delivery, Sink, SinkContext, SinkError, SinkEvent};
use collect_events::{ResponseEvent, ResponseOp};
use uuid::Uuid;

use crate::config::{Config, Recipient, Unresolved};
use crate::ledger::{Entry, Ledger};
use crate::provider::{Outgoing, Provider, SendOutcome};
use crate::template::{Template, answer, answer_text};

/// Margin before the claim when matching the provider's creation times (the provider's
/// clock is read from its answers; this covers its one-second resolution and the call).
const SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// Searches of the provider's list before an unresolved send is resent, spread over the
/// reconciliation window.
const MIN_LOOKUPS: i32 = 3;

/// The SMS sink over a provider.
pub struct SmsSink<P: Provider> {
    config: Config,
    template: Template,
    provider: P,
}

/// What to do with one response.
enum Step {
    Done,
    Reject(String),
}

impl<P: Provider> SmsSink<P> {
    /// A sink sending through `provider`.
    pub fn new(config: Config, provider: P) -> Result<Self, String> {
        let template = Template::parse(&config.template)?;
        Ok(Self {
            config,
            template,
            provider,
        })
    }

    /// Where the provider reports delivery, if the integration asks for reports.
    fn callback_url(&self, ctx: &SinkContext) -> Option<String> {
        self.config.status_callback_base_url.as_ref().map(|base| {
            format!(
                "{}/v1/callbacks/{}",
                base.trim_end_matches('/'),
                ctx.integration_id
            )
        })
    }

    fn recipient(&self, r: &ResponseEvent) -> Result<String, String> {
        let raw = match &self.config.to {
            Recipient::Number(n) => n.clone(),
            Recipient::Question(q) => match answer(r, q).map(answer_text) {
                Some(a) if !a.trim().is_empty() => a,
                _ => return Err(format!("no phone number: question '{q}' is not answered")),
            },
        };
        collect_model::normalize_phone(&raw, None)
            .map_err(|e| format!("invalid phone number '{raw}': {e}"))
    }

    async fn permit(&self, ctx: &SinkContext) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let rates = self.config.rates;
        for (key, rate) in [
            (
                format!("sms:sender:{}", self.config.from),
                Rate::per_second(rates.per_sender_per_second),
            ),
            (
                format!("sms:account:{}", self.provider.account()),
                Rate::per_second(rates.account_per_second),
            ),
        ] {
            ctx.limiter
                .acquire(&key, rate, Duration::from_secs(60))
                .await
                .map_err(|e| SinkError::retryable(e.to_string()))?;
        }
        if started.elapsed() > Duration::from_millis(50) {
            ctx.metrics.throttled();
        }
        Ok(())
    }

    /// Sends a claimed message and records what became of it.
    async fn send(
        &self,
        ctx: &SinkContext,
        ledger: &Ledger,
        id: Uuid,
        m: &Outgoing,
    ) -> Result<Step, SinkError> {
        self.permit(ctx).await?;
        let outcome = self.provider.send(m).await;
        match outcome {
            SendOutcome::Accepted(sid) => {
                ctx.metrics.request("ok");
                ledger.set(id, "sent", Some(&sid), None).await?;
                ctx.metrics.written(1);
                Ok(Step::Done)
            }
            SendOutcome::NotProcessed {
                reason,
                retry_after,
            } => {
                ctx.metrics.request("throttled");
                ctx.metrics.throttled();
                ledger.release(id).await?;
                Err(SinkError::Retryable {
                    message: reason,
                    retry_after,
                })
            }
            SendOutcome::Permanent(reason) => {
                ctx.metrics.request("error");
                ledger.set(id, "failed", None, Some(&reason)).await?;
                Ok(Step::Reject(reason))
            }
            SendOutcome::Ambiguous(reason) => {
                ctx.metrics.request("error");
                tracing::warn!(integration = %ctx.integration_id, response = %id, reason, "ambiguous send; will reconcile with the provider's list");
                ledger.set(id, "ambiguous", None, Some(&reason)).await?;
                Err(SinkError::Retryable {
                    message: format!("ambiguous send of response {id}: {reason}"),
                    retry_after: Some(Duration::from_secs(
                        self.config.reconcile_after_secs.clamp(1, 60),
                    )),
                })
            }
            SendOutcome::Fatal(reason) => {
                ctx.metrics.request("error");
                ledger.release(id).await?;
                Err(SinkError::fatal(reason))
            }
        }
    }

    /// A claim of an earlier attempt whose outcome is unknown: the provider's list decides.
    async fn reconcile(
        &self,
        ctx: &SinkContext,
        ledger: &Ledger,
        id: Uuid,
        e: &Entry,
    ) -> Result<Step, SinkError> {
        let m = Outgoing {
            to: e.to.clone(),
            from: self.config.from.clone(),
            body: e.body.clone(),
            status_callback: self.callback_url(ctx),
        };
        let since = e.claimed_at - SKEW;
        // Messages any integration accounted for to this recipient, over a wider window
        // (the provider's clock may be behind ours).
        let known = ledger
            .sids_to(&e.to, since - chrono::TimeDelta::hours(24))
            .await?;
        match self.provider.find(&m, since, &known).await {
            Ok(Some(sid)) => {
                tracing::info!(integration = %ctx.integration_id, response = %id, sid, "reconciled: the provider has the message");
                ledger.set(id, "sent", Some(&sid), None).await?;
                ctx.metrics.written(1);
                return Ok(Step::Done);
            }
            Ok(None) => {}
            Err(reason) => {
                return Err(SinkError::retryable(format!(
                    "cannot reconcile response {id}: {reason}"
                )));
            }
        }
        // Not found this time. Resent only after several looks across the window: a message
        // the provider accepted may take a moment to show in its list.
        let looks = ledger.looked(id).await?;
        let waited = Utc::now() - e.claimed_at;
        let wait = chrono::TimeDelta::seconds(
            i64::try_from(self.config.reconcile_after_secs).unwrap_or(i64::MAX),
        );
        if waited < wait || looks < MIN_LOOKUPS {
            let left = (wait - waited).to_std().unwrap_or_default();
            let spread = Duration::from_secs(
                (self.config.reconcile_after_secs / MIN_LOOKUPS as u64).clamp(1, 60),
            );
            return Err(SinkError::Retryable {
                message: format!(
                    "send of response {id} unresolved after {looks} look(s); the provider's list is checked again"
                ),
                retry_after: Some(left.min(spread).max(Duration::from_secs(1))),
            });
        }
        match self.config.unresolved {
            Unresolved::Resend => {
                tracing::warn!(integration = %ctx.integration_id, response = %id, "the provider never accepted the earlier attempt; sending");
                if !ledger.reclaim(id, e.claimed_at).await? {
                    // Another writer took it meanwhile: decide again from its entry.
                    return Err(SinkError::retryable(format!(
                        "send of response {id} was taken by another attempt; looking again"
                    )));
                }
                self.send(ctx, ledger, id, &m).await
            }
            Unresolved::DeadLetter => {
                let reason = format!(
                    "ambiguous send: the provider may or may not have accepted it ({}); not found in its list",
                    e.error.as_deref().unwrap_or("unknown")
                );
                ledger.set(id, "failed", None, Some(&reason)).await?;
                Ok(Step::Reject(reason))
            }
        }
    }

    async fn one(
        &self,
        ctx: &SinkContext,
        ledger: &Ledger,
        r: &ResponseEvent,
        redriven: bool,
    ) -> Result<Step, SinkError> {
        let Ok(id) = Uuid::parse_str(&r.response_id) else {
            return Ok(Step::Reject(format!(
                "response id '{}' is not a UUID",
                r.response_id
            )));
        };
        let deleted = r.op == ResponseOp::Deleted || r.deleted_at.is_some();
        if let Some(e) = ledger.get(id).await? {
            return match e.state.as_str() {
                "sent" => Ok(Step::Done),
                // An operator re-drives it after a fix: try again from the start.
                "failed" | "skipped" if redriven => {
                    ledger.forget(id, &e.state).await?;
                    Box::pin(self.one(ctx, ledger, r, false)).await
                }
                "skipped" => Ok(Step::Done),
                // Refused at its creation (the dead letter was sent then); deleted since.
                "failed" if deleted => Ok(Step::Done),
                "failed" => Ok(Step::Reject(e.error.unwrap_or_default())),
                // A send claimed before the deletion was known: the provider's list decides,
                // deleted or not.
                _ => self.reconcile(ctx, ledger, id, &e).await,
            };
        }
        if deleted {
            // Deleted before this integration read its creation: never texted. It happens
            // when the integration was behind and the compacted topic kept only the
            // response's latest record; the ledger says why there was no text.
            if ledger.skip_deleted(id).await? {
                tracing::info!(integration = %ctx.integration_id, response = %id, "deleted before it was texted; not texted");
            }
            return Ok(Step::Done);
        }
        let to = match self.recipient(r) {
            Ok(to) => to,
            Err(reason) => {
                ledger.fail_unclaimed(id, "", &reason).await?;
                return Ok(Step::Reject(reason));
            }
        };
        let m = Outgoing {
            to,
            from: self.config.from.clone(),
            body: self.template.render(r, self.config.max_segments),
            status_callback: self.callback_url(ctx),
        };
        if !ledger.claim(id, &m.to, &m.body).await? {
            // Claimed meanwhile (another worker after a lease moved): decide from its entry.
            return Box::pin(self.one(ctx, ledger, r, redriven)).await;
        }
        self.send(ctx, ledger, id, &m).await
    }
}

impl<P: Provider> Sink for SmsSink<P> {
    async fn start(&mut self, _ctx: &SinkContext) -> Result<(), SinkError> {
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &[Delivery],
        ctx: &SinkContext,
    ) -> Result<BatchOutcome, SinkError> {
        let ledger = Ledger::new(
            ctx.db.clone(),
            ctx.integration_id,
            ctx.form_id,
            ctx.purpose.clone(),
        )
        .fenced(ctx.lease_generation);
        let mut outcome = BatchOutcome::default();
        for (i, d) in batch.iter().enumerate() {
            let SinkEvent::Response(r) = &d.event else {
                continue;
            };
            if ctx.stopping() {
                // What was sent is in the ledger; the rest of the batch comes again.
                return Err(SinkError::retryable("stopping in the middle of a batch"));
            }
            if let Step::Reject(reason) = self.one(ctx, &ledger, r, d.redriven).await? {
                outcome.rejected.push((i, reason));
            }
        }
        Ok(outcome)
    }
}
