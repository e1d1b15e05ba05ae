//! Collect's domain events as they travel on Kafka.
//!
//! The Avro schemas live as `.avsc` files in `schemas/`; the Rust types here mirror them
//! field for field (a unit test round-trips every field). Values are framed in the Confluent
//! wire format (magic byte 0, 4-byte big-endian schema id, Avro binary), so any Confluent
//! deserializer reads them given the registry that issued the id. Records are partitioned by
//! form with the murmur2 hash of the Java client, so one form's events keep their order.
//!
//! Pure: no IO. Registration with a schema registry is the caller's (see `collect-cdc`).

mod codec;
mod partition;
mod types;

pub use codec::{
    CodecError, Encoded, EventCodec, decode, encode, form_codec, response_codec, split_frame,
};
pub use partition::{murmur2, partition_for};
pub use types::{
    Answer, ChoiceOption, FormEvent, FormOp, FormState, QuestionState, ResponseEvent, ResponseOp,
};

/// The response event schema (`schemas/response_event.avsc`).
pub const RESPONSE_EVENT_SCHEMA: &str = include_str!("../schemas/response_event.avsc");
/// The form event schema (`schemas/form_event.avsc`).
pub const FORM_EVENT_SCHEMA: &str = include_str!("../schemas/form_event.avsc");

/// The registry subject of a topic's values (Confluent's TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}
