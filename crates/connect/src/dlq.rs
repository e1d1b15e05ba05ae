//! The runtime's dead-letter topic: records that can never be written, with the reason and
//! their origin in headers, so an operator can inspect and re-drive them.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// One dead letter.
pub struct DeadLetter<'a> {
    /// Integration that could not write it.
    pub integration: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Where it was read.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset it was read at.
    pub offset: i64,
    /// The original key.
    pub key: Option<&'a [u8]>,
    /// The original value, untouched.
    pub value: &'a [u8],
    /// The form of the event, when it could be decoded.
    pub form: Option<&'a str>,
}

/// Largest dead-letter record, in bytes: the producer's `message.max.bytes` and the topic's
/// `max.message.bytes`, under every default of Apache Kafka and librdkafka.
pub const MAX_RECORD_BYTES: usize = 1_000_000;
/// Longest reason kept in a dead letter's header, in characters.
const MAX_REASON_CHARS: usize = 1_000;

/// Creates the dead-letter topic if it does not exist (30 days of retention).
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    extra: &[(String, String)],
) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        c.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = c.create().map_err(|e| e.to_string())?;
    let max = MAX_RECORD_BYTES.to_string();
    let t = NewTopic::new(topic, 6, TopicReplication::Fixed(-1))
        .set("retention.ms", "2592000000")
        .set("max.message.bytes", &max);
    for r in admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .map_err(|e| e.to_string())?
    {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("creating topic {name}: {code}")),
        }
    }
    Ok(())
}

/// The value a dead letter carries: the original record's, or, when it would not fit in a
/// record with its key and headers, a small JSON saying it was left out and how large it was.
fn bounded(value: &[u8], key_len: usize) -> std::borrow::Cow<'_, [u8]> {
    let budget = MAX_RECORD_BYTES - 8 * 1024;
    if value.len() + key_len > budget {
        std::borrow::Cow::Owned(
            serde_json::json!({"value_omitted": true, "bytes": value.len()})
                .to_string()
                .into_bytes(),
        )
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// Producer of dead letters (idempotent, acks=all), shared by the workers of a process.
/// Made at the first dead letter: a producer keeps a polling thread busy ten times a
/// second, which a process that never dead-letters does not need.
#[derive(Clone)]
pub struct DeadLetters {
    config: Arc<ClientConfig>,
    producer: Arc<tokio::sync::OnceCell<FutureProducer>>,
    topic: String,
}

impl DeadLetters {
    /// A producer for `topic`.
    pub fn new(
        brokers: &str,
        topic: &str,
        extra: &[(String, String)],
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.max.bytes", MAX_RECORD_BYTES.to_string());
        for (k, v) in extra {
            c.set(k, v);
        }
        // A setting librdkafka refuses fails here, at start, not at the first dead letter.
        drop(c.create::<FutureProducer>()?);
        Ok(Self {
            config: Arc::new(c),
            producer: Arc::default(),
            topic: topic.to_string(),
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one dead letter (keyed as the original) and waits for the broker's
    /// acknowledgement.
    pub async fn send(&self, d: DeadLetter<'_>) -> Result<(), String> {
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        // Bounded: a reason is cut, and a record that would not fit with its headers keeps
        // its identity (key, source position, form) and its size, never stalling the worker.
        let reason: String = if d.reason.chars().count() > MAX_REASON_CHARS {
            let mut r: String = d.reason.chars().take(MAX_REASON_CHARS).collect();
            r.push('…');
            r
        } else {
            d.reason.to_string()
        };
        let value = bounded(d.value, d.key.map_or(0, <[u8]>::len));
        let value: &[u8] = &value;
        let mut headers = OwnedHeaders::new();
        if let Some(form) = d.form {
            headers = headers.insert(Header {
                key: "collect.form",
                value: Some(form),
            });
        }
        let headers = headers
            .insert(Header {
                key: "collect.integration",
                value: Some(d.integration),
            })
            .insert(Header {
                key: "collect.kind",
                value: Some(d.kind),
            })
            .insert(Header {
                key: "collect.reason",
                value: Some(reason.as_str()),
            })
            .insert(Header {
                key: "collect.source.topic",
                value: Some(d.topic),
            })
            .insert(Header {
                key: "collect.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "collect.source.offset",
                value: Some(&offset),
            });
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(value)
            .headers(headers);
        if let Some(k) = d.key.filter(|k| k.len() <= 4096) {
            record = record.key(k);
        }
        let producer = self
            .producer
            .get_or_try_init(|| async { self.config.create::<FutureProducer>() })
            .await
            .map_err(|e| format!("dead-letter producer: {e}"))?;
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("dead letter not delivered: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_never_outgrows_a_record() {
        let small = vec![1u8; 1000];
        assert_eq!(bounded(&small, 10).as_ref(), small.as_slice());
        let big = vec![1u8; MAX_RECORD_BYTES];
        let out = bounded(&big, 10);
        assert!(out.len() < 100);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        assert_eq!(v["bytes"], MAX_RECORD_BYTES);
    }
}
