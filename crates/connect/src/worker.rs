//! One integration's worker: consume its form's partition of each event topic, batch, write
//! through the sink with retries, dead-letter what can never be written, and commit offsets
//! only past what is durable.
//!
//! Each integration has its own consumer, manually assigned to the one partition of each
//! topic that holds its form (the reader partitions by form), with its offsets committed
//! under its own consumer group `collect.integration.<id>`. So pausing, resuming or
//! replaying one integration never moves another, and an integration reads one partition,
//! not the whole topic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use collect_events::partition_for;
use collect_telemetry::opentelemetry::global::BoxedSpan;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::decode::{DecodeError, Decoder, Stream};
use crate::dlq::{DeadLetter, DeadLetters};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::sink::{Delivery, Sink, SinkContext, SinkError, SinkEvent};
use crate::store::Integration;
use crate::trace;

/// Settings shared by every worker of a process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topic of response events.
    pub responses_topic: String,
    /// Topic of form events.
    pub forms_topic: String,
    /// Most events per batch, for sinks without a preference of their own.
    pub batch_max_events: usize,
    /// Most encoded bytes per batch, for sinks without a preference of their own.
    pub batch_max_bytes: usize,
    /// The most events any sink's batch may hold, whatever it asks for
    /// ([`crate::Sink::batch_limits`]): the bound of a worker's memory.
    pub batch_ceiling_events: usize,
    /// The most encoded bytes any sink's batch may hold.
    pub batch_ceiling_bytes: usize,
    /// Longest wait for a batch to fill once its first event arrived.
    pub batch_max_wait: Duration,
    /// Backoff of retryable errors (retried until they stop or the worker is stopped).
    pub retry: RetryPolicy,
    /// Interval of offset commits when only other forms' records were read.
    pub idle_commit: Duration,
    /// Extra librdkafka consumer settings.
    pub consumer_options: Vec<(String, String)>,
}

impl Settings {
    /// Defaults around the given brokers, registry and topics.
    pub fn new(
        brokers: &str,
        registry_url: &str,
        responses_topic: &str,
        forms_topic: &str,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            registry_url: registry_url.into(),
            responses_topic: responses_topic.into(),
            forms_topic: forms_topic.into(),
            batch_max_events: 1000,
            batch_max_bytes: 2 * 1024 * 1024,
            batch_ceiling_events: 10_000,
            batch_ceiling_bytes: 32 * 1024 * 1024,
            batch_max_wait: Duration::from_millis(500),
            retry: RetryPolicy {
                max_attempts: u32::MAX,
                ..RetryPolicy::default()
            },
            idle_commit: Duration::from_secs(5),
            consumer_options: Vec::new(),
        }
    }
}

/// What every worker of a process shares.
#[derive(Clone)]
pub struct Shared {
    /// Settings.
    pub settings: Arc<Settings>,
    /// Event decoder.
    pub decoder: Arc<Decoder>,
    /// Dead-letter producer.
    pub dead_letters: DeadLetters,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Rate limits.
    pub limiter: Limiter,
    /// Postgres, for sinks' state.
    pub db: deadpool_postgres::Pool,
}

/// One worker's assignment.
pub struct Job {
    /// The integration.
    pub integration: Integration,
    /// The generation of the lease the process took for it.
    pub lease_generation: i64,
    /// What the process shares.
    pub shared: Shared,
    /// Turns true to stop the worker (it finishes or abandons the batch in hand, commits
    /// what is durable and returns).
    pub stop: watch::Receiver<bool>,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// Asked to stop.
    Stopped,
    /// The sink reported a fatal error: the integration must be paused with this reason.
    Paused(String),
    /// Something failed (broker, registry); the supervisor restarts it later.
    Failed(String),
    /// The sink asked for its events again ([`SinkError::Rewind`]): the committed offsets
    /// were moved back to the oldest the topics hold; the supervisor restarts it at once.
    Rewound(String),
}

/// A consumed record and its event.
struct Read {
    delivery: Delivery,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    /// The record's `process` span, when traced (ended when the batch is done).
    span: Option<BoxedSpan>,
}

/// Runs the worker of one integration until it is stopped or paused.
pub async fn run<S: Sink>(mut sink: S, kind: &'static str, mut job: Job) -> WorkerExit {
    let id = job.integration.id.to_string();
    let metrics = job.shared.metrics.clone();
    let state = |s: &str, v: i64| {
        metrics
            .state
            .with_label_values(&[id.as_str(), kind, s])
            .set(v)
    };
    state("running", 1);
    let exit = match work(&mut sink, kind, &mut job).await {
        Ok(exit) => exit,
        Err(e) => WorkerExit::Failed(e),
    };
    state("running", 0);
    if let WorkerExit::Paused(reason) = &exit {
        tracing::warn!(integration = %id, kind, reason, "integration paused");
    }
    exit
}

fn stream_of(settings: &Settings, topic: &str) -> Stream {
    if topic == settings.forms_topic {
        Stream::Forms
    } else {
        Stream::Responses
    }
}

fn form_of(event: &SinkEvent) -> &str {
    match event {
        SinkEvent::Response(r) => &r.form_id,
        SinkEvent::Form(f) => &f.form_id,
    }
}

/// The Postgres commit time of an event, in microseconds since the epoch.
fn commit_ts(event: &SinkEvent) -> i64 {
    match event {
        SinkEvent::Response(r) => r.commit_ts,
        SinkEvent::Form(f) => f.commit_ts,
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Seconds from `micros` (since the epoch) to now, never negative.
fn seconds_since(micros: i64) -> f64 {
    ((now_micros() - micros) as f64 / 1e6).max(0.0)
}

/// Whether `event` is a response submitted before `start` (microseconds since the epoch).
fn before(event: &SinkEvent, start: Option<i64>) -> bool {
    match (event, start) {
        (SinkEvent::Response(r), Some(start)) => r.submitted_at < start,
        _ => false,
    }
}

/// Sleeps `d` unless stopped first; returns true when stopped.
async fn pause_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("blocking task: {e}"))
}

/// Moves the integration's committed offsets back to the oldest each of its partitions
/// holds, then tells the sink ([`Sink::rewound`]); the worker exits to be restarted from
/// there.
async fn rewind<S: Sink>(
    consumer: &Arc<StreamConsumer>,
    assigned: &TopicPartitionList,
    sink: &mut S,
    ctx: &SinkContext,
    message: String,
) -> Result<WorkerExit, String> {
    let (c, parts) = (consumer.clone(), assigned.clone());
    blocking(move || {
        let mut tpl = TopicPartitionList::new();
        for e in parts.elements() {
            let (low, _) = c
                .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(low))
                .map_err(|e| e.to_string())?;
        }
        c.commit(&tpl, CommitMode::Sync).map_err(|e| e.to_string())
    })
    .await??;
    sink.rewound(ctx).await.map_err(|e| e.to_string())?;
    tracing::warn!(integration = %ctx.integration_id, reason = message, "the sink asked for its events again; reading them from the oldest the topics hold");
    Ok(WorkerExit::Rewound(message))
}

async fn work<S: Sink>(
    sink: &mut S,
    kind: &'static str,
    job: &mut Job,
) -> Result<WorkerExit, String> {
    let settings = job.shared.settings.clone();
    let integ = job.integration.clone();
    let id = integ.id.to_string();
    let form_id = integ.form_id.to_string();
    let labels = [id.as_str(), kind];
    let m = job.shared.metrics.clone();
    m.touch(&id, kind);
    let ctx = SinkContext {
        integration_id: integ.id,
        form_id: integ.form_id,
        purpose: integ.purpose(),
        lease_generation: job.lease_generation,
        limiter: job.shared.limiter.clone(),
        metrics: m.sink(&id, kind),
        db: job.shared.db.clone(),
        stop: job.stop.clone(),
    };

    let group = format!("collect.integration.{id}");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        // Bounded prefetch: at most this much waits in memory while the sink is slow.
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.max.bytes", "4194304");
    for (k, v) in &settings.consumer_options {
        config.set(k, v);
    }
    let consumer: Arc<StreamConsumer> = Arc::new(config.create().map_err(|e| e.to_string())?);

    // The one partition of each topic that holds this form.
    let topics = [
        settings.responses_topic.clone(),
        settings.forms_topic.clone(),
    ];
    let (c, t) = (consumer.clone(), topics.clone());
    let counts = blocking(move || {
        t.iter()
            .map(|topic| {
                let meta = c
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                meta.topics()
                    .first()
                    .map(|x| x.partitions().len() as i32)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("topic {topic} has no partitions"))
            })
            .collect::<Result<Vec<i32>, String>>()
    })
    .await??;
    let mut assigned = TopicPartitionList::new();
    for (topic, n) in topics.iter().zip(&counts) {
        assigned.add_partition(topic, partition_for(&form_id, *n));
    }
    let c = consumer.clone();
    let wanted = assigned.clone();
    let committed = blocking(move || c.committed_offsets(wanted, Duration::from_secs(10)))
        .await?
        .map_err(|e| e.to_string())?;
    let mut start = TopicPartitionList::new();
    let mut durable: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) if o >= 0 => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        start
            .add_partition_offset(e.topic(), e.partition(), offset)
            .map_err(|e| e.to_string())?;
        if let Offset::Offset(o) = offset {
            durable.insert((e.topic().to_string(), e.partition()), o);
        }
    }
    consumer.assign(&start).map_err(|e| e.to_string())?;
    tracing::info!(integration = %id, kind, form = %form_id, partitions = ?start.elements().iter().map(|e| (e.topic().to_string(), e.partition(), e.offset())).collect::<Vec<_>>(), "worker started");

    // Prepare the destination.
    let mut attempt = 0;
    loop {
        match sink.start(&ctx).await {
            Ok(()) => break,
            Err(SinkError::Fatal { message }) => return Ok(WorkerExit::Paused(message)),
            Err(SinkError::Rewind { message }) => {
                return rewind(&consumer, &assigned, sink, &ctx, message).await;
            }
            Err(SinkError::Retryable {
                message,
                retry_after,
            }) => {
                m.retries.with_label_values(&labels).inc();
                tracing::warn!(integration = %id, error = message, "sink start failed; retrying");
                if pause_or_stop(settings.retry.backoff(attempt, retry_after), &mut job.stop).await
                {
                    return Ok(WorkerExit::Stopped);
                }
                attempt += 1;
            }
        }
    }

    let (max_events, max_bytes) = match sink.batch_limits() {
        Some(l) => (l.events, l.bytes),
        None => (settings.batch_max_events, settings.batch_max_bytes),
    };
    let max_events = max_events.clamp(1, settings.batch_ceiling_events.max(1));
    let max_bytes = max_bytes.clamp(1, settings.batch_ceiling_bytes.max(1));
    let start = integ.start_at.map(|t| t.timestamp_micros());
    let mut read_to = durable.clone();
    let mut last_commit = Instant::now();
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    loop {
        // Gather a batch.
        let mut batch: Vec<Read> = Vec::new();
        let mut bytes = 0usize;
        let mut first: Option<Instant> = None;
        let mut stopping = *job.stop.borrow();
        while !stopping && batch.len() < max_events && bytes < max_bytes {
            let wait = match first {
                Some(t) => settings.batch_max_wait.saturating_sub(t.elapsed()),
                None => Duration::from_secs(1),
            };
            if first.is_some() && wait.is_zero() {
                break;
            }
            let msg = tokio::select! {
                _ = job.stop.changed() => { stopping = true; continue; }
                r = tokio::time::timeout(wait, consumer.recv()) => r,
            };
            let msg = match msg {
                Err(_) => {
                    if first.is_some() {
                        break;
                    }
                    // Idle: commit progress over other forms' records now and then.
                    if read_to != durable && last_commit.elapsed() >= settings.idle_commit {
                        break;
                    }
                    continue;
                }
                Ok(Err(e)) => return Err(format!("consumer: {e}")),
                Ok(Ok(msg)) => msg,
            };
            let topic = msg.topic().to_string();
            let (partition, offset) = (msg.partition(), msg.offset());
            let value = msg.payload().unwrap_or_default().to_vec();
            let key = msg.key().map(<[u8]>::to_vec);
            let traceparent = collect_telemetry::enabled()
                .then(|| trace::traceparent(&msg))
                .flatten();
            drop(msg);
            match job
                .shared
                .decoder
                .decode(stream_of(&settings, &topic), &value)
                .await
            {
                // Responses submitted before the integration's start are not its to deliver
                // (a notification attached to a form with history); their offsets move on.
                Ok(event) if form_of(&event) == form_id && !before(&event, start) => {
                    bytes += value.len();
                    first.get_or_insert_with(Instant::now);
                    let span = trace::process(
                        traceparent.as_deref(),
                        &trace::Source {
                            topic: &topic,
                            partition,
                            offset,
                            group: &group,
                            key: key.as_deref(),
                        },
                    );
                    batch.push(Read {
                        delivery: Delivery {
                            event,
                            topic: topic.clone(),
                            partition,
                            offset,
                            redriven: false,
                        },
                        key,
                        value,
                        span,
                    });
                }
                Ok(_) => {}
                Err(DecodeError::Poison(reason)) => {
                    job.shared
                        .dead_letters
                        .send(DeadLetter {
                            integration: &id,
                            kind,
                            reason: &reason,
                            topic: &topic,
                            partition,
                            offset,
                            key: key.as_deref(),
                            value: &value,
                            form: None,
                        })
                        .await?;
                    m.dead_letters.with_label_values(&labels).inc();
                    tracing::warn!(integration = %id, topic, partition, offset, reason, "undecodable record sent to the dead-letter topic");
                }
                Err(DecodeError::Unavailable(e)) => return Err(e),
            }
            read_to.insert((topic, partition), offset + 1);
        }

        if !batch.is_empty() {
            m.delivered
                .with_label_values(&labels)
                .inc_by(batch.len() as u64);
            m.batch_size
                .with_label_values(&[kind])
                .observe(batch.len() as f64);
            let deliveries: Vec<Delivery> = batch.iter().map(|r| r.delivery.clone()).collect();
            let oldest = deliveries
                .iter()
                .map(|d| commit_ts(&d.event))
                .min()
                .unwrap_or_else(now_micros);
            let age = m.oldest_undelivered_age.with_label_values(&labels);
            let mut attempt = 0;
            let outcome = loop {
                age.set(seconds_since(oldest));
                let span = trace::batch(
                    kind,
                    &id,
                    deliveries.len(),
                    batch.iter().filter_map(|r| r.span.as_ref()),
                );
                match sink.write(&deliveries, &ctx).instrument(span.clone()).await {
                    Ok(o) => {
                        span.in_scope(|| tracing::debug!(integration = %id, events = deliveries.len(), rejected = o.rejected.len(), "batch written"));
                        break o;
                    }
                    Err(SinkError::Fatal { message }) => {
                        span.record("otel.status_code", "error");
                        return Ok(WorkerExit::Paused(message));
                    }
                    Err(SinkError::Rewind { message }) => {
                        return rewind(&consumer, &assigned, sink, &ctx, message).await;
                    }
                    Err(SinkError::Retryable {
                        message,
                        retry_after,
                    }) => {
                        m.retries.with_label_values(&labels).inc();
                        let wait = settings.retry.backoff(attempt, retry_after);
                        span.record("otel.status_code", "error");
                        span.in_scope(|| tracing::warn!(integration = %id, error = message, retry_in = ?wait, "batch failed; retrying"));
                        if pause_or_stop(wait, &mut job.stop).await {
                            // Nothing of this batch is committed: it comes again next time.
                            return Ok(WorkerExit::Stopped);
                        }
                        attempt += 1;
                    }
                }
            };
            for (i, reason) in &outcome.rejected {
                let Some(r) = batch.get(*i) else { continue };
                let d = &r.delivery;
                job.shared
                    .dead_letters
                    .send(DeadLetter {
                        integration: &id,
                        kind,
                        reason,
                        topic: &d.topic,
                        partition: d.partition,
                        offset: d.offset,
                        key: r.key.as_deref(),
                        value: &r.value,
                        form: Some(&form_id),
                    })
                    .await?;
                m.dead_letters.with_label_values(&labels).inc();
            }
            m.committed
                .with_label_values(&labels)
                .inc_by((batch.len() - outcome.rejected.len()) as u64);
            let durable = m.commit_to_durable.with_label_values(&labels);
            for (i, (d, r)) in deliveries.iter().zip(batch.iter_mut()).enumerate() {
                let rejected = outcome.rejected.iter().find(|(j, _)| *j == i);
                if rejected.is_none() {
                    durable.observe(seconds_since(commit_ts(&d.event)));
                }
                trace::finish(r.span.take(), rejected.map(|(_, why)| why.as_str()));
            }
            age.set(0.0);
        }

        // Everything read so far is durable, skipped or dead-lettered: commit it.
        if read_to != durable {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in &read_to {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(|e| e.to_string())?;
            }
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| format!("commit: {e}"))?;
            durable = read_to.clone();
            last_commit = Instant::now();
        }
        if last_lag.elapsed() >= Duration::from_secs(5) {
            last_lag = Instant::now();
            let (c, positions) = (consumer.clone(), durable.clone());
            let all: Vec<(String, i32)> = assigned
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            if let Ok(lag) = blocking(move || {
                all.iter()
                    .map(|(t, p)| {
                        let (_, high) = c
                            .fetch_watermarks(t, *p, Duration::from_secs(2))
                            .unwrap_or((0, 0));
                        (high - positions.get(&(t.clone(), *p)).copied().unwrap_or(0)).max(0)
                    })
                    .sum::<i64>()
            })
            .await
            {
                m.lag.with_label_values(&labels).set(lag);
            }
        }
        if stopping {
            return Ok(WorkerExit::Stopped);
        }
    }
}
