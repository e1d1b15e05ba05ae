//! Records from the event topics back into events: the writer's schema comes from the
//! registry by the id in the record (cached), resolved against this build's schema, so
//! events written with older or newer compatible schemas decode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use apache_avro::Schema;
use collect_events::{FormEvent, ResponseEvent, form_codec, response_codec, split_frame};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_schema_by_id};

use crate::sink::SinkEvent;

/// Why a record did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record can never decode (not Confluent-framed, unknown schema id, bad Avro):
    /// it goes to the dead-letter topic.
    #[error("{0}")]
    Poison(String),
    /// The registry could not be reached: try again later, do not skip the record.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// Which event a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `ResponseEvent`s.
    Responses,
    /// `FormEvent`s.
    Forms,
}

/// Decodes records, caching writer schemas by id.
pub struct Decoder {
    sr: SrSettings,
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl Decoder {
    /// A decoder against the registry at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            sr: SrSettings::new(url.to_string()),
            schemas: Mutex::default(),
        }
    }

    async fn writer(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        if let Some(s) = self
            .schemas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Ok(s.clone());
        }
        let registered = get_schema_by_id(id, &self.sr).await.map_err(|e| {
            if e.retriable {
                DecodeError::Unavailable(e.to_string())
            } else {
                DecodeError::Poison(format!("schema id {id}: {e}"))
            }
        })?;
        let schema = Arc::new(
            Schema::parse_str(&registered.schema)
                .map_err(|e| DecodeError::Poison(format!("schema id {id} does not parse: {e}")))?,
        );
        let mut cache = self.schemas.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(id, schema.clone());
        Ok(schema)
    }

    /// Decodes one record value of `stream`.
    pub async fn decode(&self, stream: Stream, value: &[u8]) -> Result<SinkEvent, DecodeError> {
        let (id, payload) = split_frame(value).map_err(|e| DecodeError::Poison(e.to_string()))?;
        let writer = self.writer(id).await?;
        let poison = |e: collect_events::CodecError| DecodeError::Poison(format!("avro: {e}"));
        Ok(match stream {
            Stream::Responses => SinkEvent::Response(
                collect_events::decode::<ResponseEvent>(
                    payload,
                    &writer,
                    Some(response_codec().schema()),
                )
                .map_err(poison)?,
            ),
            Stream::Forms => SinkEvent::Form(
                collect_events::decode::<FormEvent>(payload, &writer, Some(form_codec().schema()))
                    .map_err(poison)?,
            ),
        })
    }
}
