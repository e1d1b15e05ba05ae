//! The reader's Kafka side: topics, schema registration, encoding and an idempotent producer
//! (acks=all) whose delivery reports come back as [`Ack`]s tagged with the transaction.

use std::collections::HashMap;
use std::time::Duration;

use collect_events::{
    FORM_EVENT_SCHEMA, RESPONSE_EVENT_SCHEMA, form_codec, partition_for, response_codec,
    value_subject,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use tokio::sync::mpsc;

use crate::CdcError;
use crate::assemble::Event;

/// Default largest record, in bytes: under every default of Apache Kafka (broker and topic
/// `max.message.bytes` 1,048,588) and librdkafka (`message.max.bytes` 1,000,000).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Default `min.compaction.lag.ms` of the compacted topics the reader creates, in hours: a
/// week.
pub const DEFAULT_MIN_COMPACTION_LAG_HOURS: u64 = 168;

/// [`DEFAULT_MIN_COMPACTION_LAG_HOURS`] as a duration.
pub const DEFAULT_MIN_COMPACTION_LAG: Duration =
    Duration::from_secs(DEFAULT_MIN_COMPACTION_LAG_HOURS * 3600);

/// Kafka settings of the reader.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic of response events.
    pub responses_topic: String,
    /// Topic of form and question events.
    pub forms_topic: String,
    /// Topic of changes that could not become events.
    pub dead_letter_topic: String,
    /// Partitions of topics the reader creates.
    pub partitions: i32,
    /// Replication factor of topics the reader creates (-1: the broker's default).
    pub replication_factor: i32,
    /// How long librdkafka keeps retrying a record before it fails the session.
    pub message_timeout: Duration,
    /// Most records queued in the producer (the back-pressure bound).
    pub max_queued: usize,
    /// `compression.type` of produced batches (`lz4`, `zstd`, `snappy`, `gzip`, `none`).
    pub compression: String,
    /// Largest record, in bytes: the producer's `message.max.bytes` and the topics'
    /// `max.message.bytes` (set when the reader creates them). Events that would be larger
    /// become bounded dead letters. Apache Kafka's default is 1,048,588.
    pub max_message_bytes: usize,
    /// `min.compaction.lag.ms` of the compacted topics the reader creates: no record younger
    /// than this is compacted away (Apache Kafka's topic configuration), so an integration
    /// less than this behind reads every event of a response (an SMS integration texts a
    /// response whose creation it reads, even if it was deleted since); one further behind
    /// reads only each response's latest state.
    pub min_compaction_lag: Duration,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, ...).
    pub extra: Vec<(String, String)>,
}

impl KafkaSettings {
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

/// A delivery report: the broker acknowledged (or definitively failed) one record of the
/// transaction `seq`.
#[derive(Debug)]
pub struct Ack {
    /// The transaction's sequence number in the tracker.
    pub seq: u64,
    /// The error, if the record could not be delivered.
    pub error: Option<String>,
    /// The topic of the record.
    pub topic: String,
}

/// Forwards librdkafka's delivery callbacks into a channel.
pub struct DeliveryContext {
    acks: mpsc::UnboundedSender<Ack>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let (error, topic) = match result {
            Ok(m) => (None, m.topic().to_string()),
            Err((e, m)) => (Some(e.to_string()), m.topic().to_string()),
        };
        // The receiver is gone only when the session ended; its records are re-read anyway.
        let _ = self.acks.send(Ack {
            seq: seq as u64,
            error,
            topic,
        });
    }
}

/// A record ready for the producer.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Topic.
    pub topic: String,
    /// Partition (chosen by form).
    pub partition: i32,
    /// Key.
    pub key: String,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

impl OutRecord {
    /// Bytes the record takes in a produce request, counted as the broker counts a record
    /// against `max.message.bytes`: key, value and headers, plus the record batch's own
    /// framing (61 bytes of batch header and up to 40 bytes of record fields in the v2
    /// format of KIP-98; rounded up).
    pub fn size(&self) -> usize {
        const FRAMING: usize = 128;
        FRAMING
            + self.key.len()
            + self.payload.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 10)
                .sum::<usize>()
    }
}

/// Why a record was not taken by the producer.
pub enum SendRefused {
    /// The producer queue is full: wait for acknowledgements and retry.
    QueueFull,
    /// Any other producer error.
    Failed(KafkaError),
}

/// The reader's connection to Kafka and the registry, for one session.
pub struct Output {
    producer: ThreadedProducer<DeliveryContext>,
    partitions: HashMap<String, i32>,
    /// Largest record each topic takes: the smaller of `max_message_bytes` and the topic's
    /// own `max.message.bytes` (a topic created earlier, or by an operator, may take less).
    limits: HashMap<String, usize>,
    /// Registry ids of the response and form event schemas.
    ids: (u32, u32),
    settings: KafkaSettings,
}

/// Creates the topics if they do not exist (compacted: the latest state of every response,
/// form and question is kept forever, so a new sink can backfill from the topic; every
/// record for at least [`KafkaSettings::min_compaction_lag`]).
pub async fn ensure_topics(s: &KafkaSettings) -> Result<(), CdcError> {
    let admin: AdminClient<DefaultClientContext> = s.client_config().create()?;
    // The topics take exactly what the producer may send (`message.max.bytes`), whatever
    // the broker's default: the one size checked before producing (Output::encode).
    let max = s.max_message_bytes.to_string();
    let lag = s.min_compaction_lag.as_millis().to_string();
    let compacted = [
        ("cleanup.policy", "compact"),
        ("max.message.bytes", &max),
        ("min.compaction.lag.ms", &lag),
    ];
    let dlq_retention = [
        ("cleanup.policy", "delete"),
        ("retention.ms", "2592000000"),
        ("max.message.bytes", &max),
    ];
    let topics: Vec<NewTopic<'_>> = vec![
        (s.responses_topic.as_str(), &compacted[..]),
        (s.forms_topic.as_str(), &compacted[..]),
        (s.dead_letter_topic.as_str(), &dlq_retention[..]),
    ]
    .into_iter()
    .map(|(name, config)| {
        config.iter().fold(
            NewTopic::new(
                name,
                s.partitions,
                TopicReplication::Fixed(s.replication_factor),
            ),
            |t, (k, v)| t.set(k, v),
        )
    })
    .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(topics.iter(), &opts).await? {
        match result {
            Ok(name) => tracing::info!(topic = name, partitions = s.partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(CdcError::Kafka(format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// The partition count of each of the reader's topics, from the broker's metadata.
async fn partition_counts(s: &KafkaSettings) -> Result<HashMap<String, i32>, CdcError> {
    let client: BaseConsumer = s.client_config().create()?;
    let topics = [
        s.responses_topic.clone(),
        s.forms_topic.clone(),
        s.dead_letter_topic.clone(),
    ];
    tokio::task::spawn_blocking(move || {
        let mut counts = HashMap::new();
        for topic in topics {
            let meta = client.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let n = meta
                .topics()
                .first()
                .map(|t| t.partitions().len() as i32)
                .filter(|n| *n > 0)
                .ok_or_else(|| CdcError::Kafka(format!("topic {topic} has no partitions")))?;
            counts.insert(topic, n);
        }
        Ok(counts)
    })
    .await
    .map_err(|e| CdcError::Kafka(format!("metadata task: {e}")))?
}

/// The largest record each event topic takes: the smaller of the reader's setting and the
/// topic's `max.message.bytes` (DescribeConfigs). A broker that does not answer leaves the
/// reader's setting (logged). A compacted topic whose `min.compaction.lag.ms` is below the
/// reader's setting is logged as a warning (topics are created, never altered).
async fn topic_limits(s: &KafkaSettings) -> HashMap<String, usize> {
    use rdkafka::admin::ResourceSpecifier;
    let mut out = HashMap::new();
    let admin: AdminClient<DefaultClientContext> = match s.client_config().create() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the topics' max.message.bytes");
            return out;
        }
    };
    let topics = [&s.responses_topic, &s.forms_topic, &s.dead_letter_topic];
    let specs: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    match admin.describe_configs(specs.iter(), &opts).await {
        Ok(results) => {
            for (topic, r) in topics.iter().zip(results) {
                let config = r.ok();
                let value = |k: &str| {
                    config
                        .as_ref()
                        .and_then(|c| c.get(k))
                        .and_then(|e| e.value.clone())
                };
                let compacted = value("cleanup.policy").is_some_and(|p| p.contains("compact"));
                let lag_ms = value("min.compaction.lag.ms").and_then(|v| v.parse::<u128>().ok());
                let want_ms = s.min_compaction_lag.as_millis();
                if compacted && lag_ms.is_none_or(|l| l < want_ms) {
                    // A topic created before the setting, or by an operator.
                    tracing::warn!(
                        topic,
                        min_compaction_lag_ms = lag_ms,
                        wanted_ms = %want_ms,
                        "the topic lets compaction remove records younger than --min-compaction-lag-hours: an integration that far behind may read only a response's latest event (an SMS integration then does not text a response deleted meanwhile); set it with kafka-configs --alter --entity-type topics --entity-name <topic> --add-config min.compaction.lag.ms=<ms>"
                    );
                }
                let limit = value("max.message.bytes").and_then(|v| v.parse::<usize>().ok());
                let limit = limit.map_or(s.max_message_bytes, |l| l.min(s.max_message_bytes));
                if limit < s.max_message_bytes {
                    tracing::warn!(
                        topic,
                        limit,
                        "the topic takes smaller records than --max-message-bytes; using its limit"
                    );
                }
                out.insert((*topic).clone(), limit);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the topics' max.message.bytes"),
    }
    out
}

/// Registers an event schema under `<topic>-value`; returns its id.
async fn register(sr: &SrSettings, topic: &str, name: &str, schema: &str) -> Result<u32, CdcError> {
    let registered = post_schema(
        sr,
        value_subject(topic),
        SuppliedSchema::new(Some(name.to_string()), SchemaType::Avro, schema.to_string()),
    )
    .await
    .map_err(|e| CdcError::Registry(format!("registering {}: {e}", value_subject(topic))))?;
    Ok(registered.id)
}

impl Output {
    /// Registers the schemas, learns the partition counts and opens the producer. Returns it
    /// with the receiving end of its delivery reports.
    pub async fn open(
        s: &KafkaSettings,
        registry_url: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Ack>), CdcError> {
        let sr = SrSettings::new(registry_url.to_string());
        let response_id = register(
            &sr,
            &s.responses_topic,
            "io.collect.events.ResponseEvent",
            RESPONSE_EVENT_SCHEMA,
        )
        .await?;
        let form_id = register(
            &sr,
            &s.forms_topic,
            "io.collect.events.FormEvent",
            FORM_EVENT_SCHEMA,
        )
        .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &s.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &s.compression)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", s.max_queued.to_string())
            .set("queue.buffering.max.kbytes", "65536")
            .set("message.max.bytes", s.max_message_bytes.to_string())
            .set(
                "message.timeout.ms",
                s.message_timeout.as_millis().to_string(),
            );
        // Operators' settings last: they may tune anything but idempotence and acks.
        for (k, v) in &s.extra {
            if k != "enable.idempotence" && k != "acks" {
                config.set(k, v);
            }
        }
        let producer: ThreadedProducer<DeliveryContext> =
            config.create_with_context(DeliveryContext { acks: tx })?;
        let partitions = partition_counts(s).await?;
        let limits = topic_limits(s).await;
        Ok((
            Self {
                producer,
                partitions,
                limits,
                ids: (response_id, form_id),
                settings: s.clone(),
            },
            rx,
        ))
    }

    fn partition(&self, topic: &str, form_id: &str) -> i32 {
        partition_for(form_id, self.partitions.get(topic).copied().unwrap_or(1))
    }

    /// The largest dead-letter record body the reader writes, in bytes: a dead letter says
    /// what and why, and never carries a row the topics could not take.
    pub fn dead_letter_limit(&self) -> usize {
        (self.settings.max_message_bytes / 4).clamp(1024, 256 * 1024)
    }

    /// Encodes an event into its record; an encoding failure, or a record larger than the
    /// topics take, is returned for the dead-letter topic.
    pub fn encode(&self, event: &Event) -> Result<OutRecord, String> {
        let (topic, payload) = match event {
            Event::Response(r) => (
                &self.settings.responses_topic,
                response_codec().encode(self.ids.0, r),
            ),
            Event::Form(f) => (
                &self.settings.forms_topic,
                form_codec().encode(self.ids.1, f),
            ),
        };
        let record = OutRecord {
            topic: topic.clone(),
            partition: self.partition(topic, event.form_id()),
            key: event.key().to_string(),
            payload: payload.map_err(|e| format!("avro encoding failed: {e}"))?,
            headers: Vec::new(),
        };
        self.check_size(&record)?;
        Ok(record)
    }

    /// The largest record `topic` takes, in bytes.
    fn limit(&self, topic: &str) -> usize {
        self.limits
            .get(topic)
            .copied()
            .unwrap_or(self.settings.max_message_bytes)
    }

    /// Whether the record, `extra` bytes larger, still fits its topic.
    pub fn fits(&self, record: &OutRecord, extra: usize) -> bool {
        record.size() + extra <= self.limit(&record.topic)
    }

    /// Refuses a record larger than its topic takes (`max.message.bytes`), with the reason.
    pub fn check_size(&self, record: &OutRecord) -> Result<(), String> {
        let size = record.size();
        let topic = &record.topic;
        let limit = self.limit(topic);
        if size > limit {
            return Err(format!(
                "the event is {size} bytes; topic {topic} takes at most {limit} (max.message.bytes)"
            ));
        }
        Ok(())
    }

    /// A dead-letter record: the raw change as JSON, the reason in headers.
    pub fn dead_letter(
        &self,
        form_id: Option<&str>,
        key: String,
        body: serde_json::Value,
        headers: Vec<(String, String)>,
    ) -> OutRecord {
        let topic = self.settings.dead_letter_topic.clone();
        OutRecord {
            partition: form_id.map(|f| self.partition(&topic, f)).unwrap_or(0),
            topic,
            key,
            payload: body.to_string().into_bytes(),
            headers,
        }
    }

    /// Hands a record to the producer without waiting; its delivery report comes as an
    /// [`Ack`] for `seq`.
    pub fn try_send(&self, record: &OutRecord, seq: u64) -> Result<(), SendRefused> {
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            });
        let base = BaseRecord::with_opaque_to(&record.topic, seq as usize)
            .partition(record.partition)
            .key(&record.key)
            .payload(&record.payload)
            .headers(headers);
        match self.producer.send(base) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendRefused::QueueFull)
            }
            Err((e, _)) => Err(SendRefused::Failed(e)),
        }
    }

    /// Waits (bounded) for queued records to be delivered, then drops the producer.
    pub async fn close(self, timeout: Duration) {
        let producer = self.producer;
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}
