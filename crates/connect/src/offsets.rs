//! Integrations' positions: for each partition an integration reads (its form's, in the
//! responses and forms topics), the next offset it has not made durable, skipped or
//! dead-lettered. Its worker stores them in Postgres (`integration_positions`, migration
//! `0016_integration_positions`) after each batch, fenced by its lease generation;
//! `collect status` shows them and `collect replay` moves them back.
//!
//! They used to be each integration's committed offsets in a Kafka consumer group of its own
//! (`collect.integration.<id>`), which takes one Kafka client per integration to commit. A
//! worker that finds no stored position takes its group's committed offsets once, so an
//! upgrade does not read everything again.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use collect_events::partition_for;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::feed::Tp;

/// The consumer group an integration committed to before positions moved to Postgres
/// (also its name in traces: `messaging.consumer.group.name`).
pub fn group_of(integration: Uuid) -> String {
    format!("collect.integration.{integration}")
}

/// A Postgres error reading or writing positions, named as such.
fn db_err(e: impl std::fmt::Display) -> String {
    format!("positions: {e}")
}

/// The stored positions of `integration`.
pub async fn load(
    db: &deadpool_postgres::Pool,
    integration: Uuid,
) -> Result<HashMap<Tp, i64>, String> {
    let c = db.get().await.map_err(db_err)?;
    let rows = c
        .query(
            "SELECT topic, kafka_partition, next_offset FROM integration_positions \
             WHERE integration_id = $1",
            &[&integration],
        )
        .await
        .map_err(db_err)?;
    Ok(rows
        .iter()
        .map(|r| ((r.get::<_, String>(0), r.get::<_, i32>(1)), r.get(2)))
        .collect())
}

/// Stores `positions` of `integration`. With `generation`, only while the integration's lease
/// generation is still that one: `Ok(false)` when another writer took it since (nothing is
/// written). The integration's row is locked `FOR SHARE` until the statement ends, so a new
/// writer's [`crate::lease::take`] waits for it, as with [`crate::lease::check`]. Never blocks a runtime thread (an async Postgres statement).
pub async fn save(
    db: &deadpool_postgres::Pool,
    integration: Uuid,
    generation: Option<i64>,
    positions: &BTreeMap<Tp, i64>,
    commit: Commit,
) -> Result<bool, String> {
    if positions.is_empty() {
        return Ok(true);
    }
    let topics: Vec<&str> = positions.keys().map(|(t, _)| t.as_str()).collect();
    let parts: Vec<i32> = positions.keys().map(|(_, p)| *p).collect();
    let offsets: Vec<i64> = positions.values().copied().collect();
    let mut c = db.get().await.map_err(db_err)?;
    let tx = c.transaction().await.map_err(db_err)?;
    if commit == Commit::Asynchronous {
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await
            .map_err(db_err)?;
    }
    let n = tx
        .execute(
            "INSERT INTO integration_positions (integration_id, topic, kafka_partition, next_offset) \
             SELECT $1, t, p, o FROM unnest($3::text[], $4::int[], $5::bigint[]) AS u(t, p, o) \
             WHERE EXISTS (SELECT 1 FROM integrations WHERE id = $1 \
                           AND ($2::bigint IS NULL OR lease_generation = $2) FOR SHARE) \
             ON CONFLICT (integration_id, topic, kafka_partition) \
             DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            &[&integration, &generation, &topics, &parts, &offsets],
        )
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(n as usize == positions.len())
}

/// How a position is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Durable before `save` returns: a position moved back (a rewind, a replay), or one
    /// past records sent to the dead-letter topic, which a crash must not undo.
    Durable,
    /// Without waiting for the WAL flush (`synchronous_commit = off`): a position moved
    /// forward past what is durable at the third party. A Postgres crash can lose the last
    /// ones; the events after the older position are delivered again, which idempotent sinks
    /// absorb. Saves a disk flush per batch and per integration.
    Asynchronous,
}

/// Whether `integration` was created before positions moved to Postgres (migration 16), so
/// that its former consumer group may hold committed offsets.
pub async fn older_than_positions(
    db: &deadpool_postgres::Pool,
    integration: &crate::store::Integration,
) -> Result<bool, String> {
    let c = db.get().await.map_err(db_err)?;
    let applied: Option<chrono::DateTime<chrono::Utc>> = c
        .query_opt(
            "SELECT applied_at FROM schema_migrations WHERE version = 16",
            &[],
        )
        .await
        .map_err(db_err)?
        .map(|r| r.get(0));
    Ok(applied.is_none_or(|at| integration.created_at < at))
}

/// The committed offsets of the integration's former consumer group (blocking: a Kafka
/// client made for the question and dropped after it).
pub fn from_group(
    brokers: &str,
    options: &[(String, String)],
    integration: Uuid,
    tps: &[Tp],
) -> Result<HashMap<Tp, i64>, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group_of(integration))
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000");
    for (k, v) in options {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for (t, p) in tps {
        tpl.add_partition(t, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

/// The number of partitions of `topic`, from the broker's metadata (blocking); an error when
/// the topic does not exist or has none.
pub fn partition_count<C, K>(consumer: &K, topic: &str) -> Result<i32, String>
where
    C: rdkafka::consumer::ConsumerContext,
    K: Consumer<C>,
{
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    meta.topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("topic {topic} does not exist or has no partitions"))
}

/// One partition an integration reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    /// Topic.
    pub topic: String,
    /// Partition (the form's).
    pub partition: i32,
    /// The next offset the integration will read (stored), if it stored any.
    pub committed: Option<i64>,
    /// The oldest offset the topic still holds.
    pub low: i64,
    /// The offset after the last record.
    pub high: i64,
}

impl Position {
    /// Records between the stored position (or the oldest offset) and the end. Records of
    /// other forms sharing the partition count too: the worker reads and skips them.
    pub fn lag(&self) -> i64 {
        (self.high - self.committed.unwrap_or(self.low).max(self.low)).max(0)
    }
}

/// Where an integration reads from, seen from outside its worker.
pub struct Positions {
    consumer: std::sync::Arc<BaseConsumer>,
    topics: Vec<String>,
    form: String,
    integration: Uuid,
    db: deadpool_postgres::Pool,
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
        db: deadpool_postgres::Pool,
    ) -> Result<Self, String> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for (k, v) in options {
            config.set(k, v);
        }
        Ok(Self {
            consumer: std::sync::Arc::new(config.create().map_err(blocking_err)?),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            form: form.to_string(),
            integration,
            db,
        })
    }

    /// The integration's partitions with their watermarks (blocking).
    fn marks(
        consumer: &BaseConsumer,
        topics: &[String],
        form: &str,
    ) -> Result<Vec<(Tp, i64, i64)>, String> {
        let mut out = Vec::new();
        for topic in topics {
            let p = partition_for(form, partition_count(consumer, topic)?);
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(blocking_err)?;
            out.push(((topic.clone(), p), low, high));
        }
        Ok(out)
    }

    /// The integration's partitions with their stored positions and watermarks.
    pub async fn read(&self) -> Result<Vec<Position>, String> {
        let (c, topics, form) = (
            self.consumer.clone(),
            self.topics.clone(),
            self.form.clone(),
        );
        let marks = tokio::task::spawn_blocking(move || Self::marks(&c, &topics, &form))
            .await
            .map_err(blocking_err)??;
        let stored = load(&self.db, self.integration).await?;
        Ok(marks
            .into_iter()
            .map(|(tp, low, high)| Position {
                committed: stored.get(&tp).copied(),
                topic: tp.0,
                partition: tp.1,
                low,
                high,
            })
            .collect())
    }

    /// Stores the oldest offset each partition still holds, so that the integration reads
    /// everything again. Only while no worker runs it (hold its lease): a running worker
    /// would store over it.
    pub async fn rewind(&self) -> Result<Vec<Position>, String> {
        let low: BTreeMap<Tp, i64> = self
            .read()
            .await?
            .into_iter()
            .map(|p| ((p.topic, p.partition), p.low))
            .collect();
        save(&self.db, self.integration, None, &low, Commit::Durable).await?;
        self.read().await
    }
}
