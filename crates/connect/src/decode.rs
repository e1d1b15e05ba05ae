//! Records from the event topics back into events: the writer's schema comes from the
//! registry by the id in the record (cached), resolved against this build's schema, so
//! events written with older or newer compatible schemas decode.
//!
//! Registry trouble is never poison: only the registry's definitive "schema not found" (HTTP
//! 404 with Confluent's error code 40403) makes a record undecodable; a 5xx, a timeout, a
//! refused connection, a body that does not read, or any other answer means "hold the batch
//! and try again" (Confluent Schema Registry API reference, "Errors").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use apache_avro::Schema;
use collect_events::{FormEvent, ResponseEvent, form_codec, response_codec, split_frame};

use crate::sink::SinkEvent;

/// Why a record did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record can never decode (not Confluent-framed, a schema id the registry says it
    /// does not have, bad Avro): it goes to the dead-letter topic.
    #[error("{0}")]
    Poison(String),
    /// The registry could not be reached or did not answer definitively: try again later,
    /// do not skip the record.
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
    base: String,
    http: reqwest::Client,
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
}

/// The registry's error code for "schema not found".
const SCHEMA_NOT_FOUND: i64 = 40403;

impl Decoder {
    /// A decoder against the registry at `url`.
    pub fn new(url: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self {
            base: url.trim_end_matches('/').to_string(),
            http,
            schemas: Mutex::default(),
        }
    }

    /// `GET /schemas/ids/{id}`, classified: the schema text, poison for 40403, unavailable
    /// for everything else.
    async fn fetch(&self, id: u32) -> Result<String, DecodeError> {
        let unavailable =
            |what: String| DecodeError::Unavailable(format!("schema id {id}: {what}"));
        let resp = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.base))
            .header("accept", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| unavailable(format!("{status}, unreadable answer: {e}")))?;
        if status.is_success() {
            return body["schema"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| unavailable(format!("{status}, answer without a schema")));
        }
        if status.as_u16() == 404 && body["error_code"].as_i64() == Some(SCHEMA_NOT_FOUND) {
            return Err(DecodeError::Poison(format!(
                "schema id {id} is not in the registry (40403)"
            )));
        }
        Err(unavailable(format!("{status}: {body}")))
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
        let text = self.fetch(id).await?;
        let schema = Arc::new(
            Schema::parse_str(&text)
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
