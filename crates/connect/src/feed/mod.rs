//! One reading of the event topics per `collect connect` process, shared by its integrations.
//!
//! A process runs many integrations, most of them on forms that share partitions (the reader
//! partitions by form). The feed reads each partition its integrations need once, with one
//! *live* consumer at the partitions' ends, decodes each record once, and hands the event to
//! the integrations of the record's form ([`Subscription`]). Each integration keeps its own
//! position (stored in Postgres by the worker, see [`crate::offsets`]):
//!
//! - an integration whose position is the live consumer's (its *head*) is served by it;
//! - an integration behind the head (new, replayed, restarted after a pause, or detached
//!   because it held more than its share of memory while its third party was slow) is
//!   served by one of a few *catch-up* consumers, which read from its own position in
//!   chunks, round robin over every integration behind, until it reaches the head and
//!   rejoins the live one.
//!
//! So a slow or paused integration never holds the others back, and a process holds a fixed
//! number of Kafka clients (one live, `catch_up_readers` catch-up) whatever the number of
//! integrations. Memory is bounded by one budget of bytes across every integration of the
//! process ([`Settings::memory_budget_bytes`]): a record waiting in an integration's queue or
//! in its batch holds its share of it until the batch is done. The live consumer never waits
//! for the budget: an integration it cannot give a record to (budget spent, or its own share
//! full) is detached and catches up later from its own position; catch-up consumers read
//! only while the budget has room.
//!
//! Ordering: within one partition an integration receives records in offset order, from
//! either consumer, never twice and never with a gap (the hand-over from catch-up to live
//! happens under one lock, at the head).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::decode::{DecodeError, Decoder, Stream};
use crate::metrics::Metrics;
use crate::sink::SinkEvent;
use crate::worker::Settings;

/// How often the partitions' ends are asked for `collect_connect_feed_live_lag`.
const LIVE_LAG_EVERY: Duration = Duration::from_secs(30);

mod catch_up;
mod meta;

use meta::Marks;

/// A topic and a partition.
pub type Tp = (String, i32);

/// A record's bytes, copied out of librdkafka's buffer.
struct Raw {
    offset: i64,
    key: Option<Arc<[u8]>>,
    value: Arc<[u8]>,
    traceparent: Option<String>,
}

impl Raw {
    fn of(msg: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            offset: msg.offset(),
            value: Arc::from(msg.payload().unwrap_or_default()),
            key: msg.key().map(Arc::from),
            traceparent: collect_telemetry::enabled()
                .then(|| crate::trace::traceparent(msg))
                .flatten(),
        }
    }

    /// What the record costs the budget while held: its bytes, the decoded event (about as
    /// much again) and a fixed overhead.
    fn cost(&self) -> usize {
        2 * self.value.len() + self.key.as_ref().map_or(0, |k| k.len()) + 512
    }

    fn fed(&self, tp: &Tp, event: Result<SinkEvent, String>, held: Held) -> Fed {
        Fed {
            topic: tp.0.clone(),
            partition: tp.1,
            offset: self.offset,
            key: self.key.clone(),
            value: self.value.clone(),
            event,
            traceparent: self.traceparent.clone(),
            held,
        }
    }
}

/// A record handed to an integration.
pub struct Fed {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Arc<[u8]>>,
    /// Record value (Confluent-framed Avro).
    pub value: Arc<[u8]>,
    /// The event, or why the record can never decode (it goes to the dead-letter topic).
    pub event: Result<SinkEvent, String>,
    /// The record's `traceparent` header, when traces are on and it has one.
    pub traceparent: Option<String>,
    /// The record's share of the budget, given back when this is dropped.
    pub held: Held,
}

/// A share of the process's memory budget, given back on drop.
pub struct Held {
    _permit: OwnedSemaphorePermit,
    counts: Arc<Counts>,
    cost: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counts.held.fetch_sub(self.cost, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Counts {
    /// Records sent and not yet received.
    pending: AtomicUsize,
    /// Budget bytes held by this integration's records (queued or in its batch).
    held: AtomicUsize,
}

struct SubPart {
    /// The next offset of this partition the integration has not been given nor skipped.
    next: i64,
    /// Served by the live consumer.
    live: bool,
}

struct Sub {
    form: String,
    tx: mpsc::UnboundedSender<Fed>,
    counts: Arc<Counts>,
    /// Most budget bytes this integration may hold.
    cap: usize,
    parts: HashMap<Tp, SubPart>,
}

impl Sub {
    /// Sends `fed` if the integration has room for `cost` bytes and the budget allows it.
    fn try_send(
        &self,
        budget: &Arc<Semaphore>,
        total: usize,
        make: impl FnOnce(Held) -> Fed,
        cost: usize,
    ) -> bool {
        let held = self.counts.held.load(Ordering::Acquire);
        if held > 0 && held + cost > self.cap {
            return false;
        }
        let Ok(permit) = budget.clone().try_acquire_many_owned(permits(cost, total)) else {
            return false;
        };
        self.send(permit, make, cost);
        true
    }

    fn send(&self, permit: OwnedSemaphorePermit, make: impl FnOnce(Held) -> Fed, cost: usize) {
        self.counts.held.fetch_add(cost, Ordering::AcqRel);
        self.counts.pending.fetch_add(1, Ordering::AcqRel);
        let held = Held {
            _permit: permit,
            counts: self.counts.clone(),
            cost,
        };
        if self.tx.send(make(held)).is_err() {
            // The worker is gone; its subscription is being dropped.
            self.counts.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether the integration holds more than half its share: a catch-up consumer serves
    /// it again once its worker gave some back.
    fn full(&self) -> bool {
        self.counts.held.load(Ordering::Acquire) > self.cap / 2
    }
}

/// Semaphore permits for `cost` bytes: never more than the whole budget (a record larger
/// than the budget still passes, alone).
fn permits(cost: usize, total: usize) -> u32 {
    cost.min(total).min(u32::MAX as usize) as u32
}

struct Part {
    /// The next offset the live consumer hands out.
    head: i64,
    /// The partition's end (high watermark) when last asked, for the lag.
    high: i64,
    subs: Vec<u64>,
    /// In the catch-up queue.
    queued: bool,
    /// Being read by a catch-up consumer.
    serving: bool,
}

#[derive(Default)]
struct State {
    parts: HashMap<Tp, Part>,
    subs: HashMap<u64, Sub>,
    next_id: u64,
    /// Partitions with integrations behind the head, served round robin.
    behind: VecDeque<Tp>,
}

impl State {
    /// Queues `tp` for a catch-up consumer unless it is queued already; true when queued
    /// now (wake a consumer).
    fn mark_behind(&mut self, tp: &Tp) -> bool {
        match self.parts.get_mut(tp) {
            Some(p) if !p.queued => {
                p.queued = true;
                self.behind.push_back(tp.clone());
                true
            }
            _ => false,
        }
    }

    /// Whether a live integration waits for record `offset` of `tp`.
    fn wants(&self, tp: &Tp, offset: i64) -> bool {
        self.parts.get(tp).is_some_and(|p| {
            p.subs.iter().any(|id| {
                self.subs
                    .get(id)
                    .and_then(|sub| sub.parts.get(tp))
                    .is_some_and(|sp| sp.live && offset >= sp.next)
            })
        })
    }
}

struct Inner {
    settings: Arc<Settings>,
    decoder: Arc<Decoder>,
    metrics: Arc<Metrics>,
    live: Arc<StreamConsumer<FeedContext>>,
    /// Metadata and watermark requests, on a client of their own: on the live consumer's
    /// connection they would wait behind its long-polling fetches (Kafka answers a
    /// connection's requests in order).
    meta: Arc<BaseConsumer<FeedContext>>,
    /// Partition counts by topic, with when they were asked (kept a minute). The async lock is
    /// held while asking, so that many workers starting at once (after a broker outage, a
    /// hand-over) send one request, not one each.
    counts: tokio::sync::Mutex<HashMap<String, (i32, Instant)>>,
    /// Watermarks by partition, with when they were asked; held while asking, as `counts`.
    marks: tokio::sync::Mutex<Marks>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    state: Mutex<State>,
    /// Serializes adding partitions to the live consumer.
    adding: tokio::sync::Mutex<()>,
    /// Wakes catch-up consumers.
    wake: Notify,
    stop: watch::Receiver<bool>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stream(&self, topic: &str) -> Stream {
        if topic == self.settings.forms_topic {
            Stream::Forms
        } else {
            Stream::Responses
        }
    }

    /// Decodes, waiting out registry trouble (never skips a record); `None` when stopped.
    async fn decode(&self, topic: &str, value: &[u8]) -> Option<Result<SinkEvent, String>> {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.decoder.decode(self.stream(topic), value).await {
                Ok(e) => return Some(Ok(e)),
                Err(DecodeError::Poison(reason)) => return Some(Err(reason)),
                Err(DecodeError::Unavailable(e)) => {
                    tracing::warn!(error = e, retry_in = ?wait, "schema registry unavailable; holding the partition");
                    let mut stop = self.stop.clone();
                    if *stop.borrow() {
                        return None;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return None,
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// The process's shared reading of the event topics. Cheap to clone; its consumers stop
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
    _stop: Arc<StopOnDrop>,
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// The feed's consumers' context: librdkafka's errors are logged as rdkafka's default
/// context does, except the end-of-partition events the catch-up consumers ask for.
pub(crate) struct FeedContext;

impl ClientContext for FeedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(error = %error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for FeedContext {}

fn consumer(
    settings: &Settings,
    queued_kbytes: usize,
    eof: bool,
) -> Result<StreamConsumer<FeedContext>, String> {
    client_config(settings, queued_kbytes, eof)
        .create_with_context(FeedContext)
        .map_err(|e| e.to_string())
}

fn client_config(settings: &Settings, queued_kbytes: usize, eof: bool) -> ClientConfig {
    let mut config = ClientConfig::new();
    // The operator's settings (TLS, SASL, ...) first: the feed's own come after and win, as
    // its correctness depends on them (no reset to the end, no commits, end-of-partition
    // events).
    for (k, v) in &settings.consumer_options {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &settings.brokers)
        // Never joined nor committed: partitions are assigned by hand and positions are kept
        // per integration in Postgres. librdkafka wants a group id for a consumer all the
        // same.
        .set("group.id", "collect.connect.feed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        // Bounded prefetch: part of the memory the feed may hold.
        .set("queued.max.messages.kbytes", queued_kbytes.to_string())
        .set("fetch.max.bytes", "4194304")
        .set("fetch.wait.max.ms", if eof { "100" } else { "500" });
    config
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("blocking task: {e}"))
}

impl Feed {
    /// Starts the live consumer and the catch-up consumers (within a Tokio runtime).
    pub fn new(
        settings: Arc<Settings>,
        decoder: Arc<Decoder>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let (stop_tx, stop) = watch::channel(false);
        let budget_bytes = settings.memory_budget_bytes.max(1024 * 1024);
        let live = Arc::new(consumer(&settings, 8192, false)?);
        let inner = Arc::new(Inner {
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            settings: settings.clone(),
            decoder,
            metrics,
            live,
            meta: Arc::new(
                client_config(&settings, 1024, false)
                    .create_with_context(FeedContext)
                    .map_err(|e| e.to_string())?,
            ),
            counts: tokio::sync::Mutex::default(),
            marks: tokio::sync::Mutex::default(),
            state: Mutex::default(),
            adding: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            stop,
        });
        tokio::spawn(dispatch(inner.clone()));
        for _ in 0..settings.catch_up_readers.max(1) {
            let c = consumer(&settings, 4096, true)?;
            tokio::spawn(catch_up::catch_up(inner.clone(), c));
        }
        tokio::spawn(gauges(inner.clone()));
        Ok(Self {
            inner,
            _stop: Arc::new(StopOnDrop(stop_tx)),
        })
    }

    /// Subscribes the integration of `form` to records of `starts`' partitions from each
    /// one's offset on. `cap` is the most budget bytes it may hold (queued and in its batch).
    pub async fn subscribe(
        &self,
        form: &str,
        starts: &[(Tp, i64)],
        cap: usize,
    ) -> Result<Subscription, String> {
        let inner = &self.inner;
        {
            let _adding = inner.adding.lock().await;
            let missing: Vec<Tp> = {
                let s = inner.state();
                starts
                    .iter()
                    .map(|(tp, _)| tp.clone())
                    .filter(|tp| !s.parts.contains_key(tp))
                    .collect()
            };
            if !missing.is_empty() {
                let marks = self.watermarks(&missing, Duration::ZERO).await?;
                let mut tpl = TopicPartitionList::new();
                let mut s = inner.state();
                for ((t, p), (_, high)) in missing.iter().zip(&marks) {
                    tpl.add_partition_offset(t, *p, Offset::Offset(*high))
                        .map_err(|e| e.to_string())?;
                    // Known before the consumer reads it, so no record passes unseen.
                    s.parts.insert(
                        (t.clone(), *p),
                        Part {
                            head: *high,
                            high: *high,
                            subs: Vec::new(),
                            queued: false,
                            serving: false,
                        },
                    );
                }
                drop(s);
                if let Err(e) = inner.live.incremental_assign(&tpl) {
                    let mut s = inner.state();
                    for tp in &missing {
                        s.parts.remove(tp);
                    }
                    return Err(format!("live consumer: {e}"));
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        let mut s = inner.state();
        let id = s.next_id;
        s.next_id += 1;
        let mut parts = HashMap::new();
        let mut behind = false;
        for (tp, start) in starts {
            let head = s.parts.get(tp).map_or(*start, |p| p.head);
            let live = *start >= head;
            parts.insert(tp.clone(), SubPart { next: *start, live });
            if let Some(p) = s.parts.get_mut(tp) {
                p.subs.push(id);
            }
            if !live {
                behind |= s.mark_behind(tp);
            }
        }
        s.subs.insert(
            id,
            Sub {
                form: form.to_string(),
                tx,
                counts: counts.clone(),
                cap: cap.max(64 * 1024),
                parts,
            },
        );
        inner.metrics.feed_subscriptions.set(s.subs.len() as i64);
        drop(s);
        if behind {
            inner.wake.notify_one();
        }
        Ok(Subscription {
            inner: inner.clone(),
            id,
            rx,
            counts,
        })
    }
}

/// An integration's share of the feed: its form's records of its partitions, in offset
/// order per partition. Dropping it unsubscribes.
pub struct Subscription {
    inner: Arc<Inner>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Fed>,
    counts: Arc<Counts>,
}

impl Subscription {
    /// The next record; `None` only when the feed stopped.
    pub async fn recv(&mut self) -> Option<Fed> {
        let fed = self.rx.recv().await?;
        self.counts.pending.fetch_sub(1, Ordering::AcqRel);
        Some(fed)
    }

    /// Moves `handled` (per partition, the offset after the last record the worker took and
    /// finished with) past records of other forms the integration was not given. Call it
    /// only while the worker holds no record it has not finished with.
    pub fn progress(&self, handled: &mut std::collections::BTreeMap<Tp, i64>) {
        let s = self.inner.state();
        let Some(sub) = s.subs.get(&self.id) else {
            return;
        };
        // With records in the queue, only what the worker took counts.
        if self.counts.pending.load(Ordering::Acquire) > 0 {
            return;
        }
        for (tp, sp) in &sub.parts {
            let mut at = sp.next;
            if sp.live {
                at = at.max(s.parts.get(tp).map_or(at, |p| p.head));
            }
            let e = handled.entry(tp.clone()).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Records between `positions` and the live consumer's head, over the integration's
    /// partitions (records of other forms included).
    pub fn lag(&self, positions: &std::collections::BTreeMap<Tp, i64>) -> i64 {
        let s = self.inner.state();
        positions
            .iter()
            .map(|(tp, at)| (s.parts.get(tp).map_or(*at, |p| p.head.max(p.high)) - at).max(0))
            .sum()
    }

    /// Whether every partition of the integration is served by the live consumer.
    pub fn live(&self) -> bool {
        let s = self.inner.state();
        s.subs
            .get(&self.id)
            .is_some_and(|sub| sub.parts.values().all(|p| p.live))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut s = self.inner.state();
        if let Some(sub) = s.subs.remove(&self.id) {
            for tp in sub.parts.keys() {
                if let Some(p) = s.parts.get_mut(tp) {
                    p.subs.retain(|id| *id != self.id);
                }
            }
        }
        self.inner
            .metrics
            .feed_subscriptions
            .set(s.subs.len() as i64);
    }
}

/// The live consumer: hands each record to the live integrations of its form.
async fn dispatch(inner: Arc<Inner>) {
    let mut stop = inner.stop.clone();
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => return,
            m = inner.live.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "live consumer");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let tp: Tp = (msg.topic().to_string(), msg.partition());
        let raw = Raw::of(&msg);
        drop(msg);
        let (offset, c) = (raw.offset, raw.cost());
        let mut event: Option<Result<SinkEvent, String>> = None;
        loop {
            let decode = event.is_none() && inner.state().wants(&tp, offset);
            if decode {
                // Decoded once, whoever gets it; checked again after the wait, as an
                // integration may have joined meanwhile.
                match inner.decode(&tp.0, &raw.value).await {
                    Some(e) => event = Some(e),
                    None => return,
                }
                continue;
            }
            let mut s = inner.state();
            if event.is_none() && s.wants(&tp, offset) {
                continue;
            }
            let State { parts, subs, .. } = &mut *s;
            let Some(part) = parts.get_mut(&tp) else {
                break;
            };
            let mut detached = false;
            if let Some(ev) = &event {
                for id in &part.subs {
                    let Some(sub) = subs.get_mut(id) else {
                        continue;
                    };
                    let Some(sp) = sub.parts.get(&tp) else {
                        continue;
                    };
                    if !sp.live || offset < sp.next {
                        continue;
                    }
                    if let Ok(e) = ev
                        && e.form_id() != sub.form
                    {
                        continue;
                    }
                    let make = |held| raw.fed(&tp, ev.clone(), held);
                    let sent = sub.try_send(&inner.budget, inner.budget_bytes, make, c);
                    let Some(sp) = sub.parts.get_mut(&tp) else {
                        continue;
                    };
                    if sent {
                        sp.next = offset + 1;
                    } else {
                        // No room: this integration catches up from here later (everything
                        // before this record was handed to it or was not its form's), the
                        // others go on.
                        sp.next = offset;
                        sp.live = false;
                        detached = true;
                        tracing::debug!(
                            topic = tp.0,
                            partition = tp.1,
                            offset,
                            form = sub.form,
                            "no room: detached from the live consumer"
                        );
                    }
                }
            }
            part.head = part.head.max(offset + 1);
            if detached && s.mark_behind(&tp) {
                drop(s);
                inner.wake.notify_one();
            }
            break;
        }
    }
}

/// Keeps the feed's gauges current.
async fn gauges(inner: Arc<Inner>) {
    let mut stop = inner.stop.clone();
    let mut last_ends: Option<Instant> = None;
    loop {
        {
            let s = inner.state();
            let behind = s
                .subs
                .values()
                .flat_map(|sub| sub.parts.values())
                .filter(|p| !p.live)
                .count();
            inner.metrics.feed_behind.set(behind as i64);
        }
        inner.metrics.feed_held_bytes.set(
            (inner.budget_bytes - inner.budget.available_permits().min(inner.budget_bytes)) as i64,
        );
        // The partitions' ends, so that lag counts what the live consumer has not read yet:
        // asked every half minute at most (a ListOffsets request per partition; some brokers
        // answer it far more slowly than a fetch), through the cache worker starts share.
        if last_ends.is_none_or(|t: Instant| t.elapsed() >= LIVE_LAG_EVERY) {
            last_ends = Some(Instant::now());
            let tps: Vec<Tp> = inner.state().parts.keys().cloned().collect();
            if let Ok(marks) = inner.watermarks(&tps, LIVE_LAG_EVERY).await {
                let mut s = inner.state();
                let mut behind_live = 0;
                for (tp, (_, high)) in tps.iter().zip(marks) {
                    if let Some(p) = s.parts.get_mut(tp) {
                        p.high = high;
                        behind_live += (p.high - p.head).max(0);
                    }
                }
                inner.metrics.feed_live_lag.set(behind_live);
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
