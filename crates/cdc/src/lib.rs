//! The CDC reader (`collect cdc`): every committed change to forms, questions and responses
//! becomes an Avro event on Kafka, in per-form order, and the replication slot moves only
//! past what the broker has acknowledged.
//!
//! Flow of one session: take the slot's lock (standby otherwise) -> make sure the
//! publication, topics and schemas exist -> create the slot if missing and read the initial
//! snapshot (or resume one interrupted by a crash) -> `START_REPLICATION` -> for each
//! transaction, produce its events as they arrive and confirm its end LSN once all of them
//! are acknowledged. Any error ends the session; the next one resumes from the slot
//! (duplicates are possible and identical, nothing is skipped).

pub mod assemble;
pub mod client;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod row;
mod session;
mod snapshot;
mod trace;

use collect_telemetry::opentelemetry::trace::SpanContext;

pub use snapshot::snapshot_form;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use collect_pgoutput::Lsn;
use tokio::sync::watch;

use crate::assemble::{ChangeKind, Event, Position};
use crate::client::{ConnectParams, ReplError, ReplicationClient, quote_ident};
use crate::kafka::{KafkaSettings, OutRecord, Output};
use crate::metrics::Metrics;
use crate::row::{Row, RowError};
pub use session::End;

/// Prefix of the reader's heartbeat messages (`pg_logical_emit_message`).
pub const HEARTBEAT_PREFIX: &str = "collect.heartbeat";

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// The replication connection failed.
    #[error(transparent)]
    Replication(#[from] ReplError),
    /// A normal Postgres connection failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Kafka refused or failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The schema registry refused or failed.
    #[error("schema registry: {0}")]
    Registry(String),
    /// The stream did not follow the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A message did not decode.
    #[error("decoding: {0}")]
    Decode(#[from] collect_pgoutput::DecodeError),
    /// The configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The slot was invalidated or dropped and the reader is told to stop
    /// (`--on-slot-lost=stop`).
    #[error("replication slot lost: {0}; stopping as configured (--on-slot-lost=stop)")]
    SlotLost(String),
}

/// What the reader does when it finds its slot invalidated (`wal_status = 'lost'`, after
/// `max_slot_wal_keep_size`) or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnSlotLost {
    /// Drop what is left of it, create a new slot and read a fresh consistent snapshot:
    /// every response is emitted again as a SNAPSHOT event; sinks keep the newest revision
    /// and the SMS ledger sends nothing twice.
    #[default]
    Resnapshot,
    /// Report it and stop the reader, for an operator to decide.
    Stop,
}

impl From<rdkafka::error::KafkaError> for CdcError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        CdcError::Kafka(e.to_string())
    }
}

/// Settings of the reader.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database to read (a user with the REPLICATION attribute).
    pub database_url: String,
    /// Schema registry base URL.
    pub registry_url: String,
    /// Replication slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Interval of heartbeats while nothing arrives (`None`: off).
    pub heartbeat: Option<Duration>,
    /// Interval of standby status updates.
    pub status_interval: Duration,
    /// Rows per snapshot chunk.
    pub snapshot_chunk: i64,
    /// What to do when the slot is found lost.
    pub on_slot_lost: OnSlotLost,
}

impl Config {
    /// Checks names that end up in SQL and replication commands.
    pub fn validate(&self) -> Result<(), CdcError> {
        for (what, name) in [("slot", &self.slot), ("publication", &self.publication)] {
            let ok = (1..=63).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(CdcError::Config(format!(
                    "{what} name '{name}' must be 1 to 63 characters of a-z, 0-9 and '_'"
                )));
            }
        }
        if self.snapshot_chunk < 1 {
            return Err(CdcError::Config("snapshot chunk must be at least 1".into()));
        }
        ConnectParams::from_url(&self.database_url, "collect-cdc").map_err(CdcError::Config)?;
        Ok(())
    }
}

/// The record of a row change: its event (with the `traceparent` header of the request that
/// wrote the row, and the context of its `create` span when traced), or a dead letter if it
/// cannot be one.
pub(crate) fn record_for(
    out: &Output,
    row: &Row<'_>,
    kind: ChangeKind,
    pos: Position,
    built: Result<Option<Event>, RowError>,
    metrics: &Metrics,
) -> Option<(OutRecord, Option<SpanContext>)> {
    let op = match kind {
        ChangeKind::Insert => "insert",
        ChangeKind::Update => "update",
        ChangeKind::Delete => "delete",
        ChangeKind::Snapshot => "snapshot",
    };
    let form_id = row.uuid("form_id").or_else(|_| row.uuid("id")).ok();
    let failure = match built {
        Ok(None) => return None,
        Ok(Some(event)) => match out.encode(&event) {
            Ok(mut record) => {
                let stored = match row.table() {
                    "responses" => row.text("trace_context").ok().flatten(),
                    _ => None,
                };
                // The trace context travels only where the record still fits with it: a
                // record the header would push past the topic's limit goes without it.
                let room = stored.map_or(0, |s| {
                    collect_telemetry::TRACEPARENT.len() + s.len().min(trace::MAX_TRACEPARENT) + 10
                });
                let link = if out.fits(&record, room) {
                    trace::stamp(&mut record, stored)
                } else {
                    None
                };
                match out.check_size(&record) {
                    Ok(()) => return Some((record, link)),
                    Err(reason) => reason,
                }
            }
            Err(reason) => reason,
        },
        Err(e) => e.to_string(),
    };
    tracing::error!(table = row.table(), op, lsn = %pos.commit_lsn, reason = %failure, "change sent to the dead-letter topic");
    Some((
        dead_letter(
            out,
            row.table(),
            op,
            pos,
            form_id.as_deref(),
            &failure,
            row.to_json(),
            metrics,
        ),
        None,
    ))
}

/// A dead-letter record for a change that cannot become an event.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dead_letter(
    out: &Output,
    table: &str,
    op: &str,
    pos: Position,
    form_id: Option<&str>,
    reason: &str,
    row: serde_json::Value,
    metrics: &Metrics,
) -> OutRecord {
    metrics.dead_letters.inc();
    let lsn = pos.commit_lsn.to_string();
    let mut body = serde_json::json!({
        "table": table,
        "op": op,
        "commit_lsn": lsn,
        "ordinal": pos.ordinal,
        "xid": pos.xid,
        "reason": reason,
        "row": row,
    });
    // Bounded: a row too large for an event is too large for a dead letter too. Its
    // identity stays (ids, revision, times), with its size.
    let size = body.to_string().len();
    if size > out.dead_letter_limit() {
        body["row"] = row_identity(&body["row"]);
        body["row_omitted"] = serde_json::Value::Bool(true);
        body["row_bytes"] = serde_json::Value::from(size);
    }
    out.dead_letter(
        form_id,
        format!("{table}/{lsn}/{}", pos.ordinal),
        body,
        vec![
            ("collect.reason".into(), reason.into()),
            ("collect.table".into(), table.into()),
            ("collect.op".into(), op.into()),
            ("collect.lsn".into(), lsn),
        ],
    )
}

/// The small identifying columns of a row (ids, revision, times), for a bounded dead letter.
fn row_identity(row: &serde_json::Value) -> serde_json::Value {
    const KEEP: [&str; 8] = [
        "id",
        "form_id",
        "org_id",
        "question_id",
        "revision",
        "submitted_at",
        "updated_at",
        "deleted_at",
    ];
    let mut out = serde_json::Map::new();
    for k in KEEP {
        if let Some(v) = row.get(k).filter(|v| v.to_string().len() <= 100) {
            out.insert(k.to_string(), v.clone());
        }
    }
    serde_json::Value::Object(out)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, CdcError> {
    let target = collect_store::pg::target(url).map_err(CdcError::Config)?;
    Ok(target.connect().await?)
}

/// Creates the publication if missing: forms, questions and responses, partitions published
/// through their root.
async fn ensure_publication(db: &tokio_postgres::Client, name: &str) -> Result<(), CdcError> {
    let exists = db
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        db.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE forms, questions, responses WITH (publish_via_partition_root = true)",
            quote_ident(name)
        ))
        .await?;
        tracing::info!(publication = name, "created publication");
    }
    Ok(())
}

/// Makes sure every published table and each of its partitions can be read in full: every
/// leaf is `REPLICA IDENTITY FULL` (an UPDATE or DELETE then logs the whole old row, so an
/// unchanged TOASTed value can be taken from it), and every partition of `responses` carries
/// the TRUNCATE trigger (migration `0010_truncate_notice`). Fixes what it can; refuses with a
/// clear error what it cannot (the reader's role does not own the table). Runs at the start of
/// each session and every 30 s, so that partitions added later are covered.
pub async fn ensure_partitions(
    db: &tokio_postgres::Client,
    publication: &str,
) -> Result<Vec<String>, CdcError> {
    let rows = db
        .query(
            "SELECT t.relid::regclass::text, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = t.relid \
                            AND g.tgname = 'collect_truncate_notice'), \
                    p.tablename = 'responses' AND p.schemaname = current_schema(), \
                    EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'collect_truncate_notice') \
             FROM pg_publication_tables p \
             CROSS JOIN LATERAL pg_partition_tree(format('%I.%I', p.schemaname, p.tablename)::regclass) t \
             JOIN pg_class c ON c.oid = t.relid \
             WHERE p.pubname = $1 AND c.relkind IN ('r', 'p')",
            &[&publication],
        )
        .await?;
    let mut fixed = Vec::new();
    for row in rows {
        let table: String = row.get(0);
        let identity: String = row.get(1);
        let has_trigger: bool = row.get(2);
        let of_responses: bool = row.get(3);
        let have_function: bool = row.get(4);
        if identity != "f" {
            db.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL"))
                .await
                .map_err(|e| {
                    CdcError::Config(format!(
                        "{table} is published but not REPLICA IDENTITY FULL, and the reader cannot set it ({e}); \
                         run `ALTER TABLE {table} REPLICA IDENTITY FULL` as its owner"
                    ))
                })?;
            tracing::warn!(table, "set REPLICA IDENTITY FULL on a published table");
            fixed.push(format!("{table}: REPLICA IDENTITY FULL"));
        }
        if of_responses && have_function && !has_trigger {
            db.batch_execute(&format!(
                "CREATE TRIGGER collect_truncate_notice BEFORE TRUNCATE ON {table} \
                 FOR EACH STATEMENT EXECUTE FUNCTION collect_truncate_notice()"
            ))
            .await
            .map_err(|e| {
                CdcError::Config(format!(
                    "{table} has no TRUNCATE trigger and the reader cannot add it ({e}); \
                     run migration 0010_truncate_notice's CREATE TRIGGER on it as its owner"
                ))
            })?;
            tracing::warn!(table, "added the TRUNCATE trigger to a partition");
            fixed.push(format!("{table}: TRUNCATE trigger"));
        }
    }
    Ok(fixed)
}

/// Says whether the slot this reader streamed from was invalidated (`wal_status = 'lost'`:
/// its WAL passed `max_slot_wal_keep_size` while the reader was behind) or dropped, and acts
/// on it: status, metric and log with the reason, then `on_slot_lost`. After a resnapshot
/// the session goes on as for a new slot.
async fn recover_lost_slot(
    db: &tokio_postgres::Client,
    cfg: &Config,
    metrics: &Metrics,
) -> Result<(), CdcError> {
    let status: Option<Option<String>> = db
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.slot],
        )
        .await?
        .map(|r| r.get(0));
    let streamed_before = db
        .query_opt(
            "SELECT 1 FROM cdc_snapshots WHERE slot_name = $1 AND completed_at IS NOT NULL",
            &[&cfg.slot],
        )
        .await?
        .is_some();
    let reason = match &status {
        Some(Some(s)) if s == "lost" => format!(
            "slot {} was invalidated: the WAL it needed passed max_slot_wal_keep_size while the reader was behind (wal_status = 'lost')",
            cfg.slot
        ),
        None if streamed_before => format!(
            "slot {} was dropped: the slot this reader streamed from no longer exists",
            cfg.slot
        ),
        _ => return Ok(()),
    };
    metrics.slot_lost.inc();
    let action = match cfg.on_slot_lost {
        OnSlotLost::Resnapshot => "creating a new slot and reading a fresh snapshot",
        OnSlotLost::Stop => "stopping (--on-slot-lost=stop)",
    };
    tracing::error!(slot = cfg.slot, reason, action, "replication slot lost");
    metrics.set_status(|s| s.slot_lost = Some(format!("{reason}; {action}")));
    if cfg.on_slot_lost == OnSlotLost::Stop {
        return Err(CdcError::SlotLost(reason));
    }
    if status.is_some() {
        db.execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
            .await?;
    }
    db.execute(
        "DELETE FROM cdc_snapshots WHERE slot_name = $1",
        &[&cfg.slot],
    )
    .await?;
    Ok(())
}

/// The slot's confirmed position, if the slot exists.
async fn slot_position(db: &tokio_postgres::Client, slot: &str) -> Result<Option<Lsn>, CdcError> {
    let row = db
        .query_opt(
            "SELECT confirmed_flush_lsn::text, plugin, database = current_database() FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let plugin: Option<String> = row.get(1);
    let same_db: Option<bool> = row.get(2);
    if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
        return Err(CdcError::Config(format!(
            "slot {slot} exists but is not a pgoutput slot of this database"
        )));
    }
    let lsn: Option<String> = row.get(0);
    Ok(Some(lsn.and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO)))
}

/// Runs one session: setup, snapshot if needed, then streaming.
async fn session(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    lease: &mut leader::Lease,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<End, CdcError> {
    let db = connect(&cfg.database_url).await?;
    ensure_publication(&db, &cfg.publication).await?;
    ensure_partitions(&db, &cfg.publication).await?;
    kafka::ensure_topics(&cfg.kafka).await?;
    let (out, mut acks) = Output::open(&cfg.kafka, &cfg.registry_url).await?;

    let params =
        ConnectParams::from_url(&cfg.database_url, "collect-cdc").map_err(CdcError::Config)?;
    let mut repl = ReplicationClient::connect(&params).await?;
    let system = repl.identify_system().await?;
    recover_lost_slot(&db, cfg, metrics).await?;
    tracing::info!(system_id = system.system_id, timeline = system.timeline, xlogpos = %system.xlogpos, "connected for replication");

    let start = match slot_position(&db, &cfg.slot).await? {
        None => {
            let created = repl.create_slot(&cfg.slot, true).await?;
            tracing::info!(slot = cfg.slot, consistent_point = %created.consistent_point, "created replication slot");
            db.execute(
                "INSERT INTO cdc_snapshots (slot_name, consistent_point) VALUES ($1, $2) \
                 ON CONFLICT (slot_name) DO UPDATE SET consistent_point = EXCLUDED.consistent_point, \
                 progress = '{}', rows_done = 0, started_at = now(), completed_at = NULL",
                &[&cfg.slot, &created.consistent_point.to_string()],
            )
            .await?;
            metrics.set_status(|s| s.state = "snapshot".into());
            snapshot::Snapshot {
                database_url: &cfg.database_url,
                slot: &cfg.slot,
                consistent_point: created.consistent_point,
                exported: created.snapshot_name,
                chunk: cfg.snapshot_chunk,
                out: &out,
                acks: &mut acks,
                metrics,
            }
            .run()
            .await?;
            created.consistent_point
        }
        Some(confirmed) => {
            let pending = db
                .query_opt(
                    "SELECT consistent_point FROM cdc_snapshots WHERE slot_name = $1 AND completed_at IS NULL",
                    &[&cfg.slot],
                )
                .await?;
            let known = db
                .query_opt(
                    "SELECT 1 FROM cdc_snapshots WHERE slot_name = $1",
                    &[&cfg.slot],
                )
                .await?
                .is_some();
            if pending.is_some() || !known {
                if !known {
                    db.execute(
                        "INSERT INTO cdc_snapshots (slot_name, consistent_point) VALUES ($1, $2)",
                        &[&cfg.slot, &confirmed.to_string()],
                    )
                    .await?;
                }
                let point: String = match pending {
                    Some(r) => r.get(0),
                    None => confirmed.to_string(),
                };
                tracing::warn!(
                    slot = cfg.slot,
                    "resuming an interrupted snapshot from its last acknowledged chunk"
                );
                metrics.set_status(|s| s.state = "snapshot".into());
                snapshot::Snapshot {
                    database_url: &cfg.database_url,
                    slot: &cfg.slot,
                    consistent_point: point.parse().unwrap_or(confirmed),
                    exported: None,
                    chunk: cfg.snapshot_chunk,
                    out: &out,
                    acks: &mut acks,
                    metrics,
                }
                .run()
                .await?;
            }
            confirmed
        }
    };

    let stream = start_replication(repl, &params, &cfg.slot, &cfg.publication).await?;
    tracing::info!(slot = cfg.slot, from = %start, "streaming");
    let heartbeat_db = connect(&cfg.database_url).await?;
    let poller = tokio::spawn(poll_slot(
        cfg.database_url.clone(),
        cfg.slot.clone(),
        cfg.publication.clone(),
        metrics.clone(),
    ));
    let result = session::Session::new(cfg, metrics, stream, out, acks, start, heartbeat_db)
        .run(lease, shutdown)
        .await;
    poller.abort();
    result
}

/// `START_REPLICATION`, retried while the slot is still held by a reader that just died
/// (its walsender exits once it notices the closed connection).
async fn start_replication(
    repl: ReplicationClient,
    params: &ConnectParams,
    slot: &str,
    publication: &str,
) -> Result<client::ReplicationStream, CdcError> {
    let options = [
        ("proto_version", "2"),
        ("publication_names", publication),
        ("messages", "true"),
        ("streaming", "off"),
    ];
    let mut first = Some(repl);
    let mut attempt = 0;
    loop {
        let conn = match first.take() {
            Some(c) => c,
            None => ReplicationClient::connect(params).await?,
        };
        match conn.start_replication(slot, Lsn::ZERO, &options).await {
            Ok(stream) => return Ok(stream),
            // 55006 object_in_use: "replication slot ... is active for PID ..."
            Err(e) if e.sqlstate() == Some("55006") && attempt < 60 => {
                if attempt == 0 {
                    tracing::info!(
                        slot,
                        "the slot is still active for another process; waiting for it to go"
                    );
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Polls the slot every 5 s: WAL between the current LSN and the confirmed flush LSN (lag),
/// WAL the server keeps from the slot's `restart_lsn` (retained), and its `wal_status`.
async fn poll_slot(url: String, slot: String, publication: String, metrics: Arc<Metrics>) {
    let Ok(db) = connect(&url).await else { return };
    let mut checked = std::time::Instant::now();
    loop {
        if checked.elapsed() >= Duration::from_secs(30) {
            checked = std::time::Instant::now();
            if let Err(e) = ensure_partitions(&db, &publication).await {
                tracing::error!(error = %e, "a published table cannot be read in full");
                metrics.set_status(|s| s.last_error = Some(e.to_string()));
            }
        }
        if let Ok(Some(row)) = db
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, \
                        (pg_current_wal_lsn() - restart_lsn)::bigint, wal_status \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
        {
            let lag = row.get::<_, Option<i64>>(0);
            let retained = row.get::<_, Option<i64>>(1);
            let status = row.get::<_, Option<String>>(2);
            metrics.slot_lag_bytes.set(lag.unwrap_or(0));
            metrics.slot_retained_wal_bytes.set(retained.unwrap_or(0));
            metrics.set_status(|s| {
                s.slot_lag_bytes = lag;
                s.retained_wal_bytes = retained;
                s.wal_status = status;
            });
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Runs the reader until `shutdown` turns true: standby until it holds the slot, then
/// sessions, each retried after an error with backoff (1 s doubling to 30 s).
pub async fn run(
    cfg: Config,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), CdcError> {
    cfg.validate()?;
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let lease = leader::acquire(&cfg.database_url, &cfg.slot, &mut shutdown, || {
            metrics.set_status(|s| s.state = "standby".into());
        })
        .await;
        let mut lease = match lease {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "cannot reach Postgres for the slot's lock");
                metrics.set_status(|s| {
                    s.state = "error".into();
                    s.last_error = Some(e.to_string());
                });
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        metrics.leader.set(1);
        tracing::info!(slot = cfg.slot, "holding the slot");
        let result = session(&cfg, &metrics, &mut lease, &mut shutdown).await;
        metrics.leader.set(0);
        drop(lease);
        match result {
            Ok(End::Shutdown) => return Ok(()),
            Ok(End::LeaseLost) => backoff = Duration::from_secs(1),
            Err(e @ CdcError::SlotLost(_)) => return Err(e),
            Err(e) => {
                metrics.session_errors.inc();
                tracing::error!(error = %e, retry_in = ?backoff, "session failed; resuming from the slot");
                metrics.set_status(|s| {
                    s.state = "error".into();
                    s.last_error = Some(e.to_string());
                });
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Sleeps; returns true if shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
