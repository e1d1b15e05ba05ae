//! The connector runtime (`collect connect`).
//!
//! Data engineers add a kind of integration by implementing [`Sink`] and [`Kind`] in a crate
//! of their own and listing it in [`kinds!`]; ops attach integrations to forms through the
//! connect API or declarative files. The runtime runs one worker per active integration
//! ([`worker`]): it takes the integration's form's events from the process's shared reading
//! of the event topics ([`feed`]), batches, writes through the sink with retries and rate
//! limits, dead-letters what can never be written, and stores its position ([`offsets`])
//! only past what the sink reported durable.

pub mod api;
pub mod crypto;
pub mod decode;
pub mod dlq;
pub mod feed;
pub mod kind;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod offsets;
pub mod retry;
pub mod sink;
pub mod store;
pub mod supervisor;
mod trace;
pub mod worker;

pub use futures::future::BoxFuture;
pub use kind::{Kind, KindError, Kinds, Prepared};
pub use serde_json;
pub use sink::{BatchLimits, BatchOutcome, Delivery, Sink, SinkContext, SinkError, SinkEvent};

#[cfg(feature = "conformance")]
pub mod conformance;
