//! One replication session: from `START_REPLICATION` until shutdown, loss of leadership or
//! an error. Every row change of a transaction is produced to Kafka as it arrives
//! (back-pressured by the producer's bounded queue), and the slot is confirmed only up to
//! the end of the last transaction whose records were all acknowledged.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use collect_pgoutput::replication::{ServerMessage, from_pg_micros};
use collect_pgoutput::{LogicalMessage, Lsn, OldTuple, StreamState};
use tokio::sync::{mpsc, watch};

use crate::assemble::{ChangeKind, Position, assemble};
use crate::client::ReplicationStream;
use crate::kafka::{Ack, OutRecord, Output, SendRefused};
use crate::leader::Lease;
use crate::metrics::Metrics;
use crate::row::{Relations, Row};
use crate::trace::TxTrace;
use crate::tracker::{Confirmed, Tracker};
use crate::{CdcError, Config, HEARTBEAT_PREFIX, dead_letter, record_for};

/// How a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Shutdown was asked for.
    Shutdown,
    /// The leadership lease was lost.
    LeaseLost,
}

struct Tx {
    seq: u64,
    commit_lsn: Lsn,
    commit_ts: i64,
    xid: u32,
    ordinal: u32,
    span: tracing::Span,
    /// The transaction's `send` span, when traced.
    trace: Option<TxTrace>,
    /// Tables this transaction truncated (published TRUNCATE messages, and the
    /// `collect.truncate` messages of the trigger on every responses partition).
    truncated: Vec<String>,
}

/// Prefix of the transactional message the TRUNCATE trigger emits (migration
/// `0010_truncate_notice`).
pub const TRUNCATE_PREFIX: &str = "collect.truncate";

/// A running session.
pub struct Session<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) metrics: &'a Metrics,
    pub(crate) stream: ReplicationStream,
    pub(crate) out: Output,
    pub(crate) acks: mpsc::UnboundedReceiver<Ack>,
    pub(crate) tracker: Tracker,
    pub(crate) heartbeat_db: tokio_postgres::Client,
    relations: Relations,
    decoder: StreamState,
    tx: Option<Tx>,
    last_status: (Lsn, Instant),
    last_message: Instant,
    /// Records handed to the producer and not yet acknowledged.
    outstanding: u64,
}

fn unix_micros(pg_micros: i64) -> i64 {
    from_pg_micros(pg_micros)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl<'a> Session<'a> {
    /// A session over an open stream, starting from the slot's confirmed position.
    pub fn new(
        cfg: &'a Config,
        metrics: &'a Metrics,
        stream: ReplicationStream,
        out: Output,
        acks: mpsc::UnboundedReceiver<Ack>,
        start: Lsn,
        heartbeat_db: tokio_postgres::Client,
    ) -> Self {
        Self {
            cfg,
            metrics,
            stream,
            out,
            acks,
            tracker: Tracker::new(start),
            heartbeat_db,
            relations: Relations::default(),
            decoder: StreamState::default(),
            tx: None,
            last_status: (start, Instant::now()),
            last_message: Instant::now(),
            outstanding: 0,
        }
    }

    /// Runs until shutdown, lease loss or error. On shutdown it waits (bounded) for records in
    /// flight, confirms what was acknowledged and ends the stream cleanly.
    pub async fn run(
        mut self,
        lease: &mut Lease,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<End, CdcError> {
        let mut status_tick = tokio::time::interval(self.cfg.status_interval);
        let heartbeat = self.cfg.heartbeat.unwrap_or(Duration::from_secs(3600));
        let mut heartbeat_tick = tokio::time::interval(heartbeat);
        heartbeat_tick.reset();
        self.metrics.set_status(|s| s.state = "streaming".into());
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.drain(Duration::from_secs(10)).await;
                    let confirmed = self.tracker.confirmed();
                    self.stream.finish(confirmed).await?;
                    self.out.close(Duration::from_secs(5)).await;
                    tracing::info!(%confirmed, "replication stopped");
                    return Ok(End::Shutdown);
                }
                _ = lease.lost() => {
                    tracing::warn!("lost the slot's lock; stopping this session");
                    return Ok(End::LeaseLost);
                }
                ack = self.acks.recv() => {
                    let ack = ack.ok_or_else(|| CdcError::Kafka("the producer stopped reporting deliveries".into()))?;
                    self.on_ack(ack)?;
                }
                _ = status_tick.tick() => self.maybe_status(false).await?,
                _ = heartbeat_tick.tick(), if self.cfg.heartbeat.is_some() => {
                    if self.last_message.elapsed() >= heartbeat {
                        self.heartbeat().await?;
                    }
                }
                msg = self.stream.next() => {
                    self.last_message = Instant::now();
                    match msg? {
                        None => return Err(CdcError::Protocol("the server ended the replication stream".into())),
                        Some(ServerMessage::Keepalive { wal_end, reply_requested, .. }) => {
                            if self.tx.is_none() {
                                self.tracker.idle_at(wal_end);
                            }
                            if reply_requested {
                                self.maybe_status(true).await?;
                            }
                        }
                        Some(ServerMessage::XLogData { data, .. }) => {
                            let m = self.decoder.decode(&data)?;
                            self.handle(m).await?;
                        }
                    }
                }
            }
        }
    }

    /// Emits a heartbeat: a non-transactional logical message. It comes back through the
    /// stream and, with nothing in flight, lets the slot advance past WAL written by
    /// tables this reader does not publish.
    async fn heartbeat(&mut self) -> Result<(), CdcError> {
        self.heartbeat_db
            .execute(
                "SELECT pg_logical_emit_message(false, $1, now()::text)",
                &[&HEARTBEAT_PREFIX],
            )
            .await?;
        Ok(())
    }

    fn on_ack(&mut self, ack: Ack) -> Result<(), CdcError> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.metrics.in_flight.set(self.outstanding as i64);
        if let Some(e) = &ack.error {
            self.tracker.acked(ack.seq, false);
            return Err(CdcError::Kafka(format!(
                "record not delivered to {}: {e}",
                ack.topic
            )));
        }
        self.metrics.events.with_label_values(&[&ack.topic]).inc();
        let done = self.tracker.acked(ack.seq, true);
        self.confirmed(&done);
        Ok(())
    }

    fn confirmed(&self, done: &[Confirmed]) {
        if done.is_empty() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        for c in done {
            self.metrics.transactions.inc();
            self.metrics
                .commit_to_ack
                .observe((now - c.commit_ts).max(0) as f64 / 1e6);
        }
        self.metrics
            .confirmed_lsn
            .set(self.tracker.confirmed().0 as i64);
    }

    /// Sends a status update if the confirmed position moved, every 10 s regardless, or now
    /// when the server asks.
    async fn maybe_status(&mut self, force: bool) -> Result<(), CdcError> {
        let confirmed = self.tracker.confirmed();
        if force
            || confirmed != self.last_status.0
            || self.last_status.1.elapsed() >= Duration::from_secs(10)
        {
            self.stream.send_status(confirmed, false).await?;
            self.last_status = (confirmed, Instant::now());
            self.metrics.confirmed_lsn.set(confirmed.0 as i64);
            self.metrics
                .set_status(|s| s.confirmed_lsn = confirmed.to_string());
        }
        Ok(())
    }

    /// Waits up to `limit` for acknowledgements of what is in flight.
    async fn drain(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.outstanding > 0 {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(ack)) => {
                    if self.on_ack(ack).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Hands a record to the producer; while its queue is full, processes acknowledgements
    /// and keeps the server informed (back-pressure: the stream is not read meanwhile).
    async fn send(&mut self, record: OutRecord, seq: u64) -> Result<(), CdcError> {
        loop {
            match self.out.try_send(&record, seq) {
                Ok(()) => {
                    self.tracker.sent(seq);
                    self.outstanding += 1;
                    return Ok(());
                }
                Err(SendRefused::QueueFull) => {
                    // Wait for a batch of acknowledgements, not one: retrying after every
                    // single ack costs the producer more than it gains.
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
                    let want = self.outstanding.saturating_sub(self.outstanding / 10);
                    while self.outstanding > want {
                        match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                            Ok(ack) => {
                                let ack = ack.ok_or_else(|| {
                                    CdcError::Kafka(
                                        "the producer stopped reporting deliveries".into(),
                                    )
                                })?;
                                self.on_ack(ack)?;
                            }
                            Err(_) => break,
                        }
                    }
                    self.maybe_status(false).await?;
                }
                Err(SendRefused::Failed(e)) => return Err(e.into()),
            }
        }
    }

    fn tx(&mut self) -> Result<&mut Tx, CdcError> {
        self.tx
            .as_mut()
            .ok_or_else(|| CdcError::Protocol("a row change arrived outside a transaction".into()))
    }

    async fn handle(&mut self, m: LogicalMessage) -> Result<(), CdcError> {
        match m {
            LogicalMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                let commit_ts = unix_micros(commit_time);
                let seq = self.tracker.begin(commit_ts);
                let span = tracing::debug_span!("transaction", xid, commit_lsn = %final_lsn);
                self.tx = Some(Tx {
                    seq,
                    commit_lsn: final_lsn,
                    commit_ts,
                    xid,
                    ordinal: 0,
                    span,
                    trace: TxTrace::begin(),
                    truncated: Vec::new(),
                });
            }
            LogicalMessage::Commit { end_lsn, .. } => {
                let tx = self
                    .tx
                    .take()
                    .ok_or_else(|| CdcError::Protocol("Commit without Begin".into()))?;
                if !tx.truncated.is_empty() {
                    let record = self.truncation(&tx);
                    self.send(record, tx.seq).await?;
                }
                tx.span.in_scope(
                    || tracing::debug!(changes = tx.ordinal, %end_lsn, "transaction read"),
                );
                if let Some(t) = tx.trace {
                    t.commit(tx.xid, tx.commit_lsn);
                }
                let done = self.tracker.commit(tx.seq, end_lsn);
                self.confirmed(&done);
            }
            LogicalMessage::Relation(body) => self.relations.update(&body),
            LogicalMessage::Insert { relation, new, .. } => {
                self.change(relation, ChangeKind::Insert, new, None).await?;
            }
            LogicalMessage::Update {
                relation, old, new, ..
            } => {
                self.change(relation, ChangeKind::Update, new, old).await?;
            }
            LogicalMessage::Delete { relation, old, .. } => {
                let tuple = match &old {
                    OldTuple::Full(t) | OldTuple::Key(t) => t.clone(),
                };
                self.change(relation, ChangeKind::Delete, tuple, Some(old))
                    .await?;
            }
            LogicalMessage::Truncate { relations, .. } => {
                for oid in relations {
                    let name = self
                        .relations
                        .get(oid)
                        .map(|r| r.name.clone())
                        .unwrap_or_else(|_| oid.to_string());
                    self.tx()?.truncated.push(name);
                }
            }
            LogicalMessage::Message {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == TRUNCATE_PREFIX => {
                let table = serde_json::from_slice::<serde_json::Value>(&content)
                    .ok()
                    .and_then(|v| v["table"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&content).into_owned());
                self.tx()?.truncated.push(table);
            }
            LogicalMessage::Message {
                transactional: false,
                prefix,
                lsn,
                ..
            } if prefix == HEARTBEAT_PREFIX => {
                if self.tx.is_none() {
                    self.tracker.idle_at(lsn);
                }
            }
            LogicalMessage::Message { .. }
            | LogicalMessage::Type { .. }
            | LogicalMessage::Origin { .. } => {}
            LogicalMessage::StreamStart { .. }
            | LogicalMessage::StreamStop
            | LogicalMessage::StreamCommit { .. }
            | LogicalMessage::StreamAbort { .. } => {
                return Err(CdcError::Protocol(
                    "the server streamed an in-progress transaction, but the reader asked for streaming off".into(),
                ));
            }
        }
        Ok(())
    }

    /// The dead letter that reports a transaction's TRUNCATEs: which tables (a truncated
    /// partition holds the responses of the forms that hash to it), where, and what to do.
    fn truncation(&self, tx: &Tx) -> OutRecord {
        let mut tables = tx.truncated.clone();
        tables.sort();
        tables.dedup();
        let list = tables.join(", ");
        let reason = format!(
            "TRUNCATE of {list}: the rows were removed without per-row changes; sinks still hold \
             them. Re-emit what remains with `collect snapshot --form`, and clear or re-point \
             the integrations of the affected forms (see the README: TRUNCATE)"
        );
        tracing::error!(tables = list, commit_lsn = %tx.commit_lsn, "{reason}");
        self.metrics.truncations.inc();
        self.metrics.set_status(|s| {
            s.last_truncation = Some(format!("{list} at {}", tx.commit_lsn));
        });
        dead_letter(
            &self.out,
            tables.first().map(String::as_str).unwrap_or("responses"),
            "truncate",
            Position {
                commit_lsn: tx.commit_lsn,
                commit_ts: tx.commit_ts,
                xid: tx.xid,
                ordinal: tx.ordinal,
            },
            None,
            &reason,
            serde_json::json!({ "tables": tables }),
            self.metrics,
        )
    }

    fn position(&mut self) -> Result<Position, CdcError> {
        let tx = self.tx()?;
        let pos = Position {
            commit_lsn: tx.commit_lsn,
            commit_ts: tx.commit_ts,
            xid: tx.xid,
            ordinal: tx.ordinal,
        };
        tx.ordinal += 1;
        Ok(pos)
    }

    async fn change(
        &mut self,
        relation: u32,
        kind: ChangeKind,
        tuple: collect_pgoutput::TupleData,
        old: Option<OldTuple>,
    ) -> Result<(), CdcError> {
        let pos = self.position()?;
        let seq = self.tx()?.seq;
        let record = {
            let rel = self
                .relations
                .get(relation)
                .map_err(|e| CdcError::Protocol(e.to_string()))?;
            let row = Row::new(rel, &tuple, old.as_ref());
            let was_deleted = match (&old, kind) {
                (Some(OldTuple::Full(o)), ChangeKind::Update) => Some(
                    Row::new(rel, o, None)
                        .text("deleted_at")
                        .ok()
                        .flatten()
                        .is_some(),
                ),
                _ => None,
            };
            let built = assemble(&row, kind, pos, was_deleted);
            record_for(&self.out, &row, kind, pos, built, self.metrics)
        };
        if let Some((record, link)) = record {
            if let Some(t) = self.tx()?.trace.as_mut() {
                t.record(link);
            }
            self.send(record, seq).await?;
        }
        Ok(())
    }
}
