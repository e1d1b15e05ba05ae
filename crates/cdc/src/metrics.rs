//! The reader's Prometheus metrics, its status, and the HTTP endpoint that serves them.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use tokio::net::TcpListener;

/// What the reader is doing, for `/status` and `collect status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// `starting`, `standby`, `snapshot`, `streaming` or `error`.
    pub state: String,
    /// Slot name.
    pub slot: String,
    /// Last confirmed flush LSN.
    pub confirmed_lsn: String,
    /// Bytes of WAL retained for the slot (server's current LSN minus confirmed).
    pub slot_lag_bytes: Option<i64>,
    /// Bytes of WAL the server keeps for the slot (current LSN minus `restart_lsn`).
    pub retained_wal_bytes: Option<i64>,
    /// The slot's `wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: Option<String>,
    /// The last TRUNCATE seen (table, commit LSN): what to do is in the README.
    pub last_truncation: Option<String>,
    /// Why the slot was last found lost (invalidated or dropped), and what the reader did.
    pub slot_lost: Option<String>,
    /// Rows emitted by the snapshot so far / estimated in all.
    pub snapshot_rows: Option<(i64, i64)>,
    /// Last error of a session, if the latest one failed.
    pub last_error: Option<String>,
}

/// The reader's metrics.
pub struct Metrics {
    /// Registry rendered on `/metrics`.
    pub registry: Registry,
    /// Records acknowledged by the broker, by topic.
    pub events: IntCounterVec,
    /// Changes sent to the dead-letter topic.
    pub dead_letters: IntCounter,
    /// Transactions confirmed.
    pub transactions: IntCounter,
    /// Confirmed flush LSN (as a number).
    pub confirmed_lsn: IntGauge,
    /// WAL between the server's current LSN and the slot's confirmed flush LSN, in bytes.
    pub slot_lag_bytes: IntGauge,
    /// WAL the server keeps for the slot (from its `restart_lsn`), in bytes.
    pub slot_retained_wal_bytes: IntGauge,
    /// TRUNCATEs of a published table or of one of its partitions.
    pub truncations: IntCounter,
    /// Times the slot was found invalidated (`wal_status = 'lost'`) or dropped.
    pub slot_lost: IntCounter,
    /// Commit (Postgres clock) to broker acknowledgement, per transaction.
    pub commit_to_ack: Histogram,
    /// Snapshot rows emitted.
    pub snapshot_rows: IntCounter,
    /// Estimated rows of the running snapshot.
    pub snapshot_rows_estimate: IntGauge,
    /// 1 while this process holds the slot.
    pub leader: IntGauge,
    /// Sessions that ended in an error.
    pub session_errors: IntCounter,
    /// Records handed to the producer and not yet acknowledged.
    pub in_flight: IntGauge,
    status: Mutex<Status>,
}

impl Metrics {
    /// Creates and registers the metrics.
    #[allow(clippy::expect_used)] // static names: registration cannot fail
    pub fn new(slot: &str) -> Arc<Self> {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new(
                "collect_cdc_events_total",
                "Records acknowledged by the broker, by topic",
            ),
            &["topic"],
        )
        .expect("metric");
        let dead_letters = IntCounter::new(
            "collect_cdc_dead_letters_total",
            "Changes sent to the dead-letter topic",
        )
        .expect("metric");
        let transactions = IntCounter::new(
            "collect_cdc_transactions_total",
            "Transactions confirmed to Postgres",
        )
        .expect("metric");
        let confirmed_lsn = IntGauge::new(
            "collect_cdc_confirmed_lsn",
            "Confirmed flush LSN of the slot",
        )
        .expect("metric");
        let slot_lag_bytes = IntGauge::new(
            "collect_cdc_slot_lag_bytes",
            "WAL retained for the slot (bytes)",
        )
        .expect("metric");
        let slot_retained_wal_bytes = IntGauge::new(
            "collect_cdc_slot_retained_wal_bytes",
            "WAL kept by the server for the slot, from its restart_lsn (bytes)",
        )
        .expect("metric");
        let truncations = IntCounter::new(
            "collect_cdc_truncations_total",
            "TRUNCATEs of a published table or one of its partitions",
        )
        .expect("metric");
        let slot_lost = IntCounter::new(
            "collect_cdc_slot_lost_total",
            "Times the slot was found invalidated or dropped",
        )
        .expect("metric");
        let commit_to_ack = Histogram::with_opts(
            HistogramOpts::new(
                "collect_cdc_commit_to_ack_seconds",
                "Postgres commit to broker acknowledgement",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("metric");
        let snapshot_rows = IntCounter::new(
            "collect_cdc_snapshot_rows_total",
            "Rows emitted by snapshots",
        )
        .expect("metric");
        let snapshot_rows_estimate = IntGauge::new(
            "collect_cdc_snapshot_rows_estimate",
            "Estimated rows of the running snapshot",
        )
        .expect("metric");
        let leader = IntGauge::new("collect_cdc_leader", "1 while this reader holds the slot")
            .expect("metric");
        let session_errors = IntCounter::new(
            "collect_cdc_session_errors_total",
            "Sessions that ended in an error",
        )
        .expect("metric");
        let in_flight = IntGauge::new(
            "collect_cdc_in_flight_records",
            "Records not yet acknowledged",
        )
        .expect("metric");
        for c in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dead_letters.clone()),
            Box::new(transactions.clone()),
            Box::new(confirmed_lsn.clone()),
            Box::new(slot_lag_bytes.clone()),
            Box::new(slot_retained_wal_bytes.clone()),
            Box::new(truncations.clone()),
            Box::new(slot_lost.clone()),
            Box::new(commit_to_ack.clone()),
            Box::new(snapshot_rows.clone()),
            Box::new(snapshot_rows_estimate.clone()),
            Box::new(leader.clone()),
            Box::new(session_errors.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Arc::new(Self {
            registry,
            events,
            dead_letters,
            transactions,
            confirmed_lsn,
            slot_lag_bytes,
            slot_retained_wal_bytes,
            truncations,
            slot_lost,
            commit_to_ack,
            snapshot_rows,
            snapshot_rows_estimate,
            leader,
            session_errors,
            in_flight,
            status: Mutex::new(Status {
                state: "starting".into(),
                slot: slot.into(),
                ..Status::default()
            }),
        })
    }

    /// Changes the status.
    pub fn set_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// Serves `/metrics`, `/status`, `/healthz` and `/readyz` until `shutdown` resolves.
/// Ready means streaming or standing by, not failing.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }),
        )
        .route(
            "/status",
            get(|State(m): State<Arc<Metrics>>| async move { axum::Json(m.status()) }),
        )
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                let s = m.status();
                let ready = matches!(s.state.as_str(), "streaming" | "standby" | "snapshot");
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, axum::Json(s)).into_response()
            }),
        )
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
