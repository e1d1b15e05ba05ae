//! Bytes in, values out: the logical replication wire formats of Postgres, with no IO.
//!
//! - [`replication`]: the CopyData payloads of the streaming replication protocol (XLogData,
//!   primary keepalive, standby status update).
//! - [`message`]: the messages of the `pgoutput` plugin inside XLogData, protocol versions 1
//!   and 2 (streamed in-progress transactions included).
//!
//! Decoding never panics: malformed input is a [`DecodeError`]. The crate is fuzzed
//! (`fuzz/`) and unit-tested against bytes captured from Postgres 15.

mod error;
mod lsn;
pub mod message;
mod reader;
pub mod replication;

pub use error::DecodeError;
pub use lsn::Lsn;
pub use message::{
    Column, LogicalMessage, OldTuple, RelationBody, ReplicaIdentity, StreamState, TupleData,
    TupleValue, decode,
};
