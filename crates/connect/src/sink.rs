//! The contract between the runtime and a connector: the [`Sink`] trait.
//!
//! A data engineer adding a kind of integration writes one type implementing [`Sink`] (the
//! writes) and one implementing [`Kind`](crate::kind::Kind) (its configuration). Everything
//! else (consuming, batching, retries, rate limits, offsets, dead letters, pause and resume,
//! metrics) is the runtime's.

use std::future::Future;
use std::time::Duration;

use collect_events::{FormEvent, ResponseEvent};

use crate::limits::Limiter;
use crate::metrics::SinkMetrics;

/// An event as a sink receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkEvent {
    /// A response as of one change (self-contained: every answer).
    Response(ResponseEvent),
    /// A form or question as of one change.
    Form(FormEvent),
}

impl SinkEvent {
    /// The id of the event's form.
    pub fn form_id(&self) -> &str {
        match self {
            SinkEvent::Response(r) => &r.form_id,
            SinkEvent::Form(f) => &f.form_id,
        }
    }
}

/// One event and where it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The event.
    pub event: SinkEvent,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Re-driven from the dead-letter topic by an operator (after a fix): a sink that
    /// remembers permanent refusals (the SMS ledger) tries again instead of refusing.
    pub redriven: bool,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Transient (rate limited, 5xx, timeout, connection reset before sending): the runtime
    /// retries the whole batch with backoff, waiting at least `retry_after` when given.
    #[error("retryable: {message}")]
    Retryable {
        /// What happened.
        message: String,
        /// The third party's Retry-After, if it gave one.
        retry_after: Option<Duration>,
    },
    /// The integration cannot go on until someone acts (revoked credentials, a destination
    /// that refuses every write, a configuration the third party rejects): the runtime
    /// commits nothing of the batch, pauses the integration and reports `message`; other
    /// integrations go on.
    #[error("fatal: {message}")]
    Fatal {
        /// What happened, for the operator.
        message: String,
    },
    /// The destination lost what was written and the sink has made it ready to be filled
    /// again (a deleted sheet tab recreated): the runtime commits nothing of the batch, moves
    /// the integration's committed offsets back to the oldest the topics hold, calls
    /// [`Sink::rewound`], and restarts the worker, which reads every event again.
    #[error("rewind: {message}")]
    Rewind {
        /// Why, for the operator.
        message: String,
    },
}

impl SinkError {
    /// A retryable error.
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A fatal error.
    pub fn fatal(message: impl Into<String>) -> Self {
        SinkError::Fatal {
            message: message.into(),
        }
    }
}

/// The result of a batch that was written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events that can never be written (index in the batch, reason). The runtime sends them
    /// to the dead-letter topic; every other event of the batch is durable.
    pub rejected: Vec<(usize, String)>,
}

/// What the runtime lends a sink.
#[derive(Clone)]
pub struct SinkContext {
    /// The integration's id.
    pub integration_id: uuid::Uuid,
    /// The form it is attached to.
    pub form_id: uuid::Uuid,
    /// What the integration is for, per form: its name, or its id when it has none. A sink
    /// that must act once per response whatever happens to the integration (a notification)
    /// keys its ledger by form and purpose, so that deleting the integration and attaching it
    /// again under the same name never acts twice.
    pub purpose: String,
    /// The generation of the lease this writer holds (`integrations.lease_generation`). A
    /// sink's state writes check it in the same statement or transaction
    /// ([`crate::lease::check`]), so a writer that lost its lease writes nothing more.
    pub lease_generation: i64,
    /// Rate limits, keyed as the third party counts them; shared by every integration of
    /// the process.
    pub limiter: Limiter,
    /// Counters the sink updates (requests, throttles, rows).
    pub metrics: SinkMetrics,
    /// Postgres, for the sink's own state (e.g. which row a response has).
    pub db: deadpool_postgres::Pool,
    /// Turns true when the worker is asked to stop. A sink that writes a batch in many
    /// calls (one message per event) checks [`SinkContext::stopping`] between them and
    /// gives up with a retryable error: nothing of the batch is committed, so what it had
    /// already written must be skipped when the batch comes again.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl SinkContext {
    /// Whether the worker is asked to stop.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// A destination of events.
///
/// Delivery is **at least once**: after a crash between a write and the commit of its
/// offsets, after a rebalance or a replay, the same events come again, in the same order.
/// Every implementation must make a repeated event a no-op or an identical rewrite (never a
/// second row, never a second message), and must tolerate events older than ones it
/// already applied (use the response's `revision`).
pub trait Sink: Send + 'static {
    /// Prepares the destination (checks credentials, creates what is missing). Called before
    /// the first batch and after every resume; must be idempotent.
    fn start(&mut self, ctx: &SinkContext) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Writes a batch of events of one form, in their order. Returns `Ok` only when the
    /// effect of every event not listed in [`BatchOutcome::rejected`] is durable at the third
    /// party; only then does the runtime move the offsets past the batch. On `Err`, nothing of
    /// the batch counts as written: retryable errors retry the whole batch, so the writes
    /// already made must be repeatable (see the trait's contract).
    fn write(
        &mut self,
        batch: &[Delivery],
        ctx: &SinkContext,
    ) -> impl Future<Output = Result<BatchOutcome, SinkError>> + Send;

    /// The largest batch this sink wants, in events and in bytes of encoded events, when the
    /// third party rewards big requests (a quota counted in requests). `None`: the runtime's
    /// settings (`--batch-max-events`, 2 MiB). Memory held per worker grows with it.
    fn batch_limits(&self) -> Option<BatchLimits> {
        None
    }

    /// Called once the runtime has moved the offsets back after [`SinkError::Rewind`]: a
    /// sink that asks for a rewind until it is done (a flag in its own state, so that a
    /// crash between its repair and the rewind still refills) clears the request here.
    fn rewound(&mut self, ctx: &SinkContext) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }
}

/// See [`Sink::batch_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most events in a batch.
    pub events: usize,
    /// Most bytes of encoded events in a batch.
    pub bytes: usize,
}
