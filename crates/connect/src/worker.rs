//! One integration's worker: consume its form's partition of each event topic, batch, write
//! through the sink with retries, dead-letter what can never be written, and commit offsets
//! only past what is durable.
//!
//! Each integration reads the one partition of each topic that holds its form (the reader
//! partitions by form) through the process's shared [`Feed`]: records are read and decoded
//! once per process and handed to the integrations of their form. Each integration keeps its
//! own position (stored in Postgres, [`crate::offsets`]), so pausing, resuming, replaying or a
//! slow third party of one integration never moves nor holds back another.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collect_events::partition_for;
use collect_telemetry::opentelemetry::global::BoxedSpan;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::decode::Decoder;
use crate::dlq::{DeadLetter, DeadLetters};
use crate::feed::{Feed, Held, Subscription, Tp};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::offsets;
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
    /// Bytes the process's records may hold in memory, across every integration (queued
    /// for them and in their batches; a record costs about twice its size, see
    /// [`crate::feed`]).
    pub memory_budget_bytes: usize,
    /// Kafka consumers serving integrations behind the live one, in turn.
    pub catch_up_readers: usize,
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
            memory_budget_bytes: 256 * 1024 * 1024,
            catch_up_readers: 2,
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
    /// Postgres, for sinks' state and integrations' positions.
    pub db: deadpool_postgres::Pool,
    /// The process's reading of the event topics.
    pub feed: Feed,
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
    key: Option<Arc<[u8]>>,
    value: Arc<[u8]>,
    /// The record's `process` span, when traced (ended when the batch is done).
    span: Option<BoxedSpan>,
    /// Its share of the process's memory budget, given back when the batch is done.
    _held: Held,
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

/// How old the watermarks a worker starts from may be.
const START_MARKS_MAX_AGE: Duration = Duration::from_secs(2);

/// Attempts at storing a position after a failed one (about 9 s in all), before the worker
/// gives up and starts again from the last stored position.
const SAVE_ATTEMPTS: u32 = 8;
/// The wait before the n-th attempt is n times this.
const SAVE_BACKOFF: Duration = Duration::from_millis(250);

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

/// The attempt count after a retryable failure. A failure that came with a time to try
/// again (a `Retry-After`, or the sink's own schedule, such as an SMS send to look up again
/// in the provider's list in a second) does not grow the backoff: the wait is the one asked
/// for. Only failures without one back off exponentially, so a sink working through a batch
/// on its own schedule is not slowed to the backoff's ceiling by the failures it met before.
fn next_attempt(attempt: u32, retry_after: Option<Duration>) -> u32 {
    if retry_after.is_some() {
        attempt
    } else {
        attempt.saturating_add(1)
    }
}

/// The error of a worker whose lease another writer took.
fn lease_lost(id: &str) -> String {
    format!("lease lost: another writer runs integration {id}; positions not stored")
}

/// Moves the integration's positions back to the oldest offset each of its partitions
/// holds, then tells the sink ([`Sink::rewound`]); the worker exits to be restarted from
/// there.
async fn rewind<S: Sink>(
    job: &Job,
    tps: &[Tp],
    sink: &mut S,
    ctx: &SinkContext,
    message: String,
) -> Result<WorkerExit, String> {
    let marks = job.shared.feed.watermarks(tps, Duration::ZERO).await?;
    let low: BTreeMap<Tp, i64> = tps.iter().cloned().zip(marks.iter().map(|m| m.0)).collect();
    let id = job.integration.id;
    if !offsets::save(
        &job.shared.db,
        id,
        Some(job.lease_generation),
        &low,
        offsets::Commit::Durable,
    )
    .await?
    {
        return Err(lease_lost(&id.to_string()));
    }
    sink.rewound(ctx).await.map_err(|e| e.to_string())?;
    tracing::warn!(integration = %ctx.integration_id, reason = message, "the sink asked for its events again; reading them from the oldest the topics hold");
    Ok(WorkerExit::Rewound(message))
}

/// Where the integration starts reading: its stored positions; where it has none, its
/// former consumer group's committed offsets, else the oldest offset the partition holds
/// (stored at once, so the group is asked once). A position older than the oldest record
/// the topic still holds (retention removed records it never read), or past the end (the
/// topic was recreated), starts at the oldest, with a warning.
async fn starts(job: &Job, tps: &[Tp]) -> Result<BTreeMap<Tp, i64>, String> {
    let shared = &job.shared;
    let id = job.integration.id;
    let stored = offsets::load(&shared.db, id).await?;
    let missing = tps.iter().any(|tp| !stored.contains_key(tp));
    let mut imported = HashMap::new();
    if missing && offsets::older_than_positions(&shared.db, &job.integration).await? {
        let (brokers, options, t) = (
            shared.settings.brokers.clone(),
            shared.settings.consumer_options.clone(),
            tps.to_vec(),
        );
        match tokio::task::spawn_blocking(move || offsets::from_group(&brokers, &options, id, &t))
            .await
        {
            Ok(Ok(found)) => imported = found,
            // Not known yet (a coordinator still loading after a restart, a timeout): try
            // again later rather than read the whole history.
            Ok(Err(e)) => return Err(format!("committed offsets of the former group: {e}")),
            Err(e) => return Err(format!("blocking task: {e}")),
        }
    }
    // Watermarks a few seconds old serve: the oldest offset only grows (a start below it is
    // moved up by the consumer's reset), and a position past a remembered end is checked
    // against a fresh one before it is believed.
    let mut marks = shared.feed.watermarks(tps, START_MARKS_MAX_AGE).await?;
    if tps.iter().zip(&marks).any(|(tp, (_, high))| {
        stored
            .get(tp)
            .or_else(|| imported.get(tp))
            .is_some_and(|at| at > high)
    }) {
        marks = shared.feed.watermarks(tps, Duration::ZERO).await?;
    }
    let mut out = BTreeMap::new();
    for (tp, (low, high)) in tps.iter().zip(marks) {
        let mut at = stored
            .get(tp)
            .or_else(|| imported.get(tp))
            .copied()
            .unwrap_or(low);
        if at > high {
            // Offsets never go back in a partition: this is another partition of the same
            // name (the topic was recreated, the Kafka cluster replaced). Read it all.
            tracing::warn!(integration = %id, topic = tp.0, partition = tp.1, position = at, end = high, "the stored position is past the partition's end: the topic was recreated; reading it from the oldest record");
            at = low;
        }
        if at < low {
            tracing::warn!(integration = %id, topic = tp.0, partition = tp.1, position = at, oldest = low, "records this integration never read were removed by the topic's retention; reading from the oldest it holds");
        }
        out.insert(tp.clone(), at.max(low));
    }
    if missing
        && !offsets::save(
            &shared.db,
            id,
            Some(job.lease_generation),
            &out,
            offsets::Commit::Durable,
        )
        .await?
    {
        return Err(lease_lost(&id.to_string()));
    }
    Ok(out)
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
    let group = offsets::group_of(integ.id);

    // The one partition of each topic that holds this form.
    let topics = [
        settings.responses_topic.clone(),
        settings.forms_topic.clone(),
    ];
    // Both ask the broker through the process's one metadata client, in turn with other
    // starting workers: a stop does not wait for them.
    let mut stop = job.stop.clone();
    let counts = tokio::select! {
        c = job.shared.feed.partition_counts(&topics) => c?,
        _ = stop.wait_for(|s| *s) => return Ok(WorkerExit::Stopped),
    };
    let tps: Vec<Tp> = topics
        .iter()
        .zip(&counts)
        .map(|(t, n)| (t.clone(), partition_for(&form_id, *n)))
        .collect();
    let starts = tokio::select! {
        s = starts(job, &tps) => s?,
        _ = stop.wait_for(|s| *s) => return Ok(WorkerExit::Stopped),
    };
    tracing::info!(integration = %id, kind, form = %form_id, positions = ?starts, "worker started");

    // Prepare the destination.
    let mut attempt = 0;
    loop {
        match sink.start(&ctx).await {
            Ok(()) => break,
            Err(SinkError::Fatal { message }) => return Ok(WorkerExit::Paused(message)),
            Err(SinkError::Rewind { message }) => {
                return rewind(job, &tps, sink, &ctx, message).await;
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
                attempt = next_attempt(attempt, retry_after);
            }
        }
    }

    let (max_events, max_bytes) = match sink.batch_limits() {
        Some(l) => (l.events, l.bytes),
        None => (settings.batch_max_events, settings.batch_max_bytes),
    };
    let max_events = max_events.clamp(1, settings.batch_ceiling_events.max(1));
    let max_bytes = max_bytes.clamp(1, settings.batch_ceiling_bytes.max(1));
    // Room for a full batch and as much again waiting (in the budget's units: a record costs
    // about twice its size plus 512 bytes), within a 32nd of the budget, so that a few
    // integrations stuck in retries cannot spend it all.
    let cap = (2 * (2 * max_bytes + 512 * max_events)).min(settings.memory_budget_bytes / 32);
    let from: Vec<(Tp, i64)> = starts.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let mut sub: Subscription = job.shared.feed.subscribe(&form_id, &from, cap).await?;
    let start = integ.start_at.map(|t| t.timestamp_micros());
    let mut read_to = starts.clone();
    let mut durable = starts;
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    loop {
        // Gather a batch.
        let mut batch: Vec<Read> = Vec::new();
        // Whether this round sent dead letters (its position is then committed durably).
        let mut dead_lettered = false;
        let mut bytes = 0usize;
        let mut first: Option<Instant> = None;
        let mut stopping = *job.stop.borrow();
        while !stopping && batch.len() < max_events && bytes < max_bytes {
            let wait = match first {
                Some(t) => settings.batch_max_wait.saturating_sub(t.elapsed()),
                // Idle: wake now and then to store progress over other forms' records.
                None => settings.idle_commit,
            };
            if first.is_some() && wait.is_zero() {
                break;
            }
            let fed = tokio::select! {
                _ = job.stop.changed() => { stopping = true; continue; }
                r = tokio::time::timeout(wait, sub.recv()) => r,
            };
            let fed = match fed {
                Err(_) => break,
                Ok(None) => return Err("the process's feed stopped".into()),
                Ok(Some(fed)) => fed,
            };
            read_to.insert((fed.topic.clone(), fed.partition), fed.offset + 1);
            match fed.event {
                // Responses submitted before the integration's start are not its to deliver
                // (a notification attached to a form with history); their offsets move on.
                Ok(event) if event.form_id() == form_id && !before(&event, start) => {
                    bytes += fed.value.len();
                    first.get_or_insert_with(Instant::now);
                    let span = trace::process(
                        fed.traceparent.as_deref(),
                        &trace::Source {
                            topic: &fed.topic,
                            partition: fed.partition,
                            offset: fed.offset,
                            group: &group,
                            key: fed.key.as_deref(),
                        },
                    );
                    batch.push(Read {
                        delivery: Delivery {
                            event,
                            topic: fed.topic,
                            partition: fed.partition,
                            offset: fed.offset,
                            redriven: false,
                        },
                        key: fed.key,
                        value: fed.value,
                        span,
                        _held: fed.held,
                    });
                }
                Ok(_) => {}
                Err(reason) => {
                    dead_lettered = true;
                    job.shared
                        .dead_letters
                        .send(DeadLetter {
                            integration: &id,
                            kind,
                            reason: &reason,
                            topic: &fed.topic,
                            partition: fed.partition,
                            offset: fed.offset,
                            key: fed.key.as_deref(),
                            value: &fed.value,
                            form: None,
                        })
                        .await?;
                    m.dead_letters.with_label_values(&labels).inc();
                    tracing::warn!(integration = %id, topic = fed.topic, partition = fed.partition, offset = fed.offset, reason, "undecodable record sent to the dead-letter topic");
                }
            }
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
                        span.in_scope(|| tracing::debug!(integration = %id, events = deliveries.len(), rejected = o.rejected.len(), first = ?deliveries.first().map(|d| (d.partition, d.offset)), last = ?deliveries.last().map(|d| (d.partition, d.offset)), "batch written"));
                        break o;
                    }
                    Err(SinkError::Fatal { message }) => {
                        span.record("otel.status_code", "error");
                        return Ok(WorkerExit::Paused(message));
                    }
                    Err(SinkError::Rewind { message }) => {
                        return rewind(job, &tps, sink, &ctx, message).await;
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
                            // Nothing of this batch is stored: it comes again next time.
                            return Ok(WorkerExit::Stopped);
                        }
                        attempt = next_attempt(attempt, retry_after);
                    }
                }
            };
            dead_lettered = !outcome.rejected.is_empty();
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
        drop(batch);

        // Everything read so far is durable, skipped or dead-lettered: store the position
        // (past other forms' records too, when nothing of this one waits).
        sub.progress(&mut read_to);
        if read_to != durable {
            // After dead letters the position is stored durably: a crash of Postgres must not
            // bring those records, and their dead letters, back.
            let commit = if dead_lettered {
                offsets::Commit::Durable
            } else {
                offsets::Commit::Asynchronous
            };
            let mut attempt: u32 = 0;
            let saved = loop {
                match offsets::save(
                    &job.shared.db,
                    integ.id,
                    Some(job.lease_generation),
                    &read_to,
                    commit,
                )
                .await
                {
                    Ok(saved) => break saved,
                    // Postgres restarting, a connection dropped: what the batch wrote stays
                    // written; store its position a little later rather than write it again.
                    Err(e) if attempt < SAVE_ATTEMPTS => {
                        attempt += 1;
                        tracing::warn!(integration = %id, error = e, attempt, "storing the position failed; trying again");
                        if pause_or_stop(SAVE_BACKOFF * attempt, &mut job.stop).await {
                            return Ok(WorkerExit::Stopped);
                        }
                    }
                    Err(e) => return Err(e),
                }
            };
            if !saved {
                return Err(lease_lost(&id));
            }
            tracing::debug!(integration = %id, positions = ?read_to, "position stored");
            durable = read_to.clone();
        }
        if last_lag.elapsed() >= Duration::from_secs(5) {
            last_lag = Instant::now();
            m.lag.with_label_values(&labels).set(sub.lag(&durable));
        }
        if stopping {
            return Ok(WorkerExit::Stopped);
        }
    }
}
