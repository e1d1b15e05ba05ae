//! The runtime's dead-letter topic: records that can never be written, with the reason and
//! their origin in headers, so an operator can inspect and re-drive them.

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
    let t = NewTopic::new(topic, 6, TopicReplication::Fixed(-1)).set("retention.ms", "2592000000");
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

/// Producer of dead letters (idempotent, acks=all), shared by the workers of a process.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
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
            .set("linger.ms", "5");
        for (k, v) in extra {
            c.set(k, v);
        }
        Ok(Self {
            producer: c.create()?,
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
                value: Some(d.reason),
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
            .payload(d.value)
            .headers(headers);
        if let Some(k) = d.key {
            record = record.key(k);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("dead letter not delivered: {e}"))
    }
}
