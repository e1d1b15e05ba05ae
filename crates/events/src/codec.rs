//! The Confluent wire format: magic byte 0, schema id (4 bytes, big-endian), Avro binary.

use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encoding and decoding failures.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Shorter than the 5-byte header.
    #[error("record of {0} bytes is too short for the Confluent header")]
    TooShort(usize),
    /// The first byte is not the magic 0.
    #[error("unknown magic byte {0}")]
    BadMagic(u8),
    /// Avro refused the value or the bytes.
    #[error("avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
}

impl From<apache_avro::Error> for CodecError {
    fn from(e: apache_avro::Error) -> Self {
        CodecError::Avro(Box::new(e))
    }
}

/// An encoded record value.
pub type Encoded = Vec<u8>;

/// One of the project's event schemas, parsed once, with its Avro writer prepared once
/// (resolving a schema's names is costly; doing it per record halved the reader's rate).
pub struct EventCodec {
    schema: &'static Schema,
    writer: GenericDatumWriter<'static>,
}

impl EventCodec {
    #[allow(clippy::expect_used)] // the schemas are constants of this crate, parsed in its tests
    fn new(text: &'static str) -> Self {
        let schema: &'static Schema = Box::leak(Box::new(
            Schema::parse_str(text).expect("valid event schema"),
        ));
        let writer = GenericDatumWriter::builder(schema)
            .build()
            .expect("resolvable event schema");
        Self { schema, writer }
    }

    /// The parsed schema.
    pub fn schema(&self) -> &'static Schema {
        self.schema
    }

    /// Encodes `value` in the Confluent format under `schema_id` (the id this schema has in
    /// the registry).
    pub fn encode<T: Serialize>(&self, schema_id: u32, value: &T) -> Result<Encoded, CodecError> {
        let mut out = Vec::with_capacity(512);
        out.push(0);
        out.extend_from_slice(&schema_id.to_be_bytes());
        self.writer.write_ser(&mut out, value)?;
        Ok(out)
    }
}

/// The codec of `schemas/response_event.avsc`.
pub fn response_codec() -> &'static EventCodec {
    static CODEC: LazyLock<EventCodec> =
        LazyLock::new(|| EventCodec::new(crate::RESPONSE_EVENT_SCHEMA));
    &CODEC
}

/// The codec of `schemas/form_event.avsc`.
pub fn form_codec() -> &'static EventCodec {
    static CODEC: LazyLock<EventCodec> =
        LazyLock::new(|| EventCodec::new(crate::FORM_EVENT_SCHEMA));
    &CODEC
}

/// Encodes `value` with `schema` (registered under `schema_id`) in the Confluent format.
pub fn encode<T: Serialize>(
    schema_id: u32,
    schema: &Schema,
    value: &T,
) -> Result<Encoded, CodecError> {
    let datum = GenericDatumWriter::builder(schema)
        .build()?
        .write_ser_to_vec(value)?;
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}

/// Splits a Confluent-framed record into its schema id and Avro payload.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    if bytes.len() < 5 {
        return Err(CodecError::TooShort(bytes.len()));
    }
    if bytes[0] != 0 {
        return Err(CodecError::BadMagic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[5..]))
}

/// Decodes an Avro payload written with `writer` into `T` (read through `reader`, which may
/// be a newer compatible schema).
pub fn decode<T: DeserializeOwned>(
    payload: &[u8],
    writer: &Schema,
    reader: Option<&Schema>,
) -> Result<T, CodecError> {
    let mut cursor = payload;
    let value = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .maybe_reader_schema(reader)
        .build()?
        .read_value(&mut cursor)?;
    Ok(apache_avro::from_value(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn response() -> ResponseEvent {
        ResponseEvent {
            event_id: "0/16B3748/2".into(),
            op: ResponseOp::Updated,
            response_id: "r".into(),
            form_id: "f".into(),
            org_id: "o".into(),
            revision: 3,
            source: "api".into(),
            metadata_json: "{\"utm\":\"x\"}".into(),
            answers: vec![
                Answer {
                    question_id: "q1".into(),
                    alias: Some("name".into()),
                    question_type: "text".into(),
                    text: Some("Ann".into()),
                    number: None,
                    boolean: None,
                    date: None,
                    choices: None,
                },
                Answer {
                    question_id: "q2".into(),
                    alias: None,
                    question_type: "multi_choice".into(),
                    text: None,
                    number: Some("12.50".into()),
                    boolean: Some(true),
                    date: Some(19_000),
                    choices: Some(vec!["a".into(), "b".into()]),
                },
            ],
            submitted_at: 1_700_000_000_000_000,
            updated_at: 1_700_000_000_000_001,
            deleted_at: Some(1_700_000_000_000_002),
            commit_lsn: 0x16B_3748,
            commit_ts: 1_700_000_000_000_003,
            xid: 751,
        }
    }

    #[test]
    fn response_event_round_trips_every_field() {
        let schema = Schema::parse_str(RESPONSE_EVENT_SCHEMA).unwrap();
        let ev = response();
        let bytes = encode(42, &schema, &ev).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 42]);
        let (id, payload) = split_frame(&bytes).unwrap();
        assert_eq!(id, 42);
        let back: ResponseEvent = decode(payload, &schema, None).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn form_event_round_trips_both_shapes() {
        let schema = Schema::parse_str(FORM_EVENT_SCHEMA).unwrap();
        let form = FormEvent {
            event_id: "e".into(),
            op: FormOp::Created,
            form_id: "f".into(),
            form: Some(FormState {
                org_id: "o".into(),
                title: "T".into(),
                description: None,
                status: "active".into(),
                version: 2,
                created_at: 1,
                updated_at: 2,
                deleted_at: None,
            }),
            question: None,
            commit_lsn: 5,
            commit_ts: 6,
            xid: 7,
        };
        let question = FormEvent {
            form: None,
            question: Some(QuestionState {
                question_id: "q".into(),
                label: "L".into(),
                question_type: "single_choice".into(),
                alias: Some("a".into()),
                position: 3,
                required: true,
                options: vec![ChoiceOption {
                    code: "c".into(),
                    label: "C".into(),
                }],
                created_at: 1,
                updated_at: 2,
                deleted_at: Some(3),
            }),
            op: FormOp::Snapshot,
            ..form.clone()
        };
        for ev in [form, question] {
            let bytes = encode(1, &schema, &ev).unwrap();
            let back: FormEvent = decode(split_frame(&bytes).unwrap().1, &schema, None).unwrap();
            assert_eq!(back, ev);
        }
    }

    #[test]
    fn prepared_codecs_encode_what_the_plain_encoder_does() {
        let ev = response();
        let plain = encode(9, response_codec().schema(), &ev).unwrap();
        assert_eq!(response_codec().encode(9, &ev).unwrap(), plain);
        let back: ResponseEvent = decode(&plain[5..], response_codec().schema(), None).unwrap();
        assert_eq!(back, ev);
        assert!(form_codec().schema().canonical_form().contains("FormEvent"));
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(
            split_frame(&[0, 0, 0]),
            Err(CodecError::TooShort(3))
        ));
        assert!(matches!(
            split_frame(&[1, 0, 0, 0, 1, 2]),
            Err(CodecError::BadMagic(1))
        ));
        let schema = Schema::parse_str(RESPONSE_EVENT_SCHEMA).unwrap();
        assert!(decode::<ResponseEvent>(&[0xff, 0xff, 0xff], &schema, None).is_err());
    }

    #[test]
    fn a_newer_reader_schema_with_a_defaulted_field_reads_old_events() {
        let writer = Schema::parse_str(RESPONSE_EVENT_SCHEMA).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(RESPONSE_EVENT_SCHEMA).unwrap();
        json["fields"].as_array_mut().unwrap().push(
            serde_json::json!({"name": "channel", "type": ["null", "string"], "default": null}),
        );
        let reader = Schema::parse_str(&json.to_string()).unwrap();
        let bytes = encode(1, &writer, &response()).unwrap();
        let back: ResponseEvent = decode(&bytes[5..], &writer, Some(&reader)).unwrap();
        assert_eq!(back, response());
    }
}
