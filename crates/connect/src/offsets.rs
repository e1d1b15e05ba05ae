//! An integration's position in Kafka, seen from outside its worker: the partitions it
//! reads (its form's, in the responses and forms topics), what its group committed, and
//! the partitions' ends. `collect status` shows it; `collect replay` moves it back.

use std::time::Duration;

use collect_events::partition_for;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

/// The consumer group of an integration.
pub fn group_of(integration: Uuid) -> String {
    format!("collect.integration.{integration}")
}

/// One partition an integration reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    /// Topic.
    pub topic: String,
    /// Partition (the form's).
    pub partition: i32,
    /// The next offset the integration will read (committed), if it committed any.
    pub committed: Option<i64>,
    /// The oldest offset the topic still holds.
    pub low: i64,
    /// The offset after the last record.
    pub high: i64,
}

impl Position {
    /// Records between the committed offset (or the oldest one) and the end. Records of
    /// other forms sharing the partition count too: the worker reads and skips them.
    pub fn lag(&self) -> i64 {
        (self.high - self.committed.unwrap_or(self.low).max(self.low)).max(0)
    }
}

/// Where an integration reads from.
pub struct Positions {
    consumer: BaseConsumer,
    topics: Vec<String>,
    form: String,
}

fn blocking_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Positions {
    /// A client of `brokers` (extra librdkafka `options`) for `integration` of `form`.
    pub fn new(
        brokers: &str,
        options: &[(String, String)],
        topics: &[&str],
        integration: Uuid,
        form: Uuid,
    ) -> Result<Self, String> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", group_of(integration))
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000");
        for (k, v) in options {
            config.set(k, v);
        }
        Ok(Self {
            consumer: config.create().map_err(blocking_err)?,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            form: form.to_string(),
        })
    }

    fn assignment(&self) -> Result<TopicPartitionList, String> {
        let mut tpl = TopicPartitionList::new();
        for topic in &self.topics {
            let meta = self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(blocking_err)?;
            let n = meta
                .topics()
                .first()
                .map(|t| t.partitions().len() as i32)
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("topic {topic} does not exist"))?;
            tpl.add_partition(topic, partition_for(&self.form, n));
        }
        Ok(tpl)
    }

    /// The integration's partitions with their committed offsets and ends (blocking).
    pub fn read(&self) -> Result<Vec<Position>, String> {
        let committed = self
            .consumer
            .committed_offsets(self.assignment()?, Duration::from_secs(10))
            .map_err(blocking_err)?;
        let mut out = Vec::new();
        for e in committed.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                .map_err(blocking_err)?;
            out.push(Position {
                topic: e.topic().to_string(),
                partition: e.partition(),
                committed: match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                },
                low,
                high,
            });
        }
        Ok(out)
    }

    /// Commits the oldest offset each partition still holds, so that the integration reads
    /// everything again (blocking). Only while no worker runs it: a running worker would
    /// commit over it.
    pub fn rewind(&self) -> Result<Vec<Position>, String> {
        let mut tpl = TopicPartitionList::new();
        for p in self.read()? {
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.low))
                .map_err(blocking_err)?;
        }
        self.consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .map_err(blocking_err)?;
        self.read()
    }
}
