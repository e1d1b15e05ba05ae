//! Metrics of the connector runtime, labelled by integration and kind.

use std::sync::Arc;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The runtime's metrics.
pub struct Metrics {
    /// Registry rendered on `/metrics`.
    pub registry: Registry,
    /// Records between the integration's committed offset and the partition's end.
    pub lag: IntGaugeVec,
    /// Events handed to sinks.
    pub delivered: IntCounterVec,
    /// Events whose writes are durable and whose offsets are committed.
    pub committed: IntCounterVec,
    /// Records sent to the dead-letter topic.
    pub dead_letters: IntCounterVec,
    /// Batch retries after retryable errors.
    pub retries: IntCounterVec,
    /// Events per batch.
    pub batch_size: HistogramVec,
    /// Requests made to the third party, by outcome (`ok`, `throttled`, `error`).
    pub requests: IntCounterVec,
    /// Times a sink waited for a rate limit permit, or got a 429.
    pub throttles: IntCounterVec,
    /// Rows (or messages) the third party stored.
    pub written: IntCounterVec,
    /// 1 for the state an integration is in here (`running`, `paused`, `starting`).
    pub state: IntGaugeVec,
    /// Seconds from the Postgres commit of each event to the moment its write was durable
    /// at the third party and its offset committed (by integration and kind).
    pub commit_to_durable: HistogramVec,
    /// Age in seconds (from its Postgres commit) of the oldest event the integration read and
    /// has not yet made durable; 0 when it holds none.
    pub oldest_undelivered_age: prometheus::GaugeVec,
    /// Bytes of the process's memory budget held by records read and not yet done with
    /// (queued for integrations or in their batches), see [`crate::feed`].
    pub feed_held_bytes: IntGauge,
    /// Integrations' partitions read by a catch-up consumer (behind the live one).
    pub feed_behind: IntGauge,
    /// Integrations reading from this process's feed.
    pub feed_subscriptions: IntGauge,
    /// Records between the live consumer's position and the partitions' ends (a live
    /// consumer that stopped reading shows here).
    pub feed_live_lag: IntGauge,
}

impl Metrics {
    /// Creates and registers the metrics.
    #[allow(clippy::expect_used)] // static names: registration cannot fail
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let labels = &["integration", "kind"];
        let counter = |name: &str, help: &str, extra: &[&str]| {
            let mut l: Vec<&str> = labels.to_vec();
            l.extend_from_slice(extra);
            let c = IntCounterVec::new(Opts::new(name, help), &l).expect("metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let delivered = counter(
            "collect_connect_delivered_total",
            "Events handed to sinks",
            &[],
        );
        let committed = counter(
            "collect_connect_committed_total",
            "Events durable and committed",
            &[],
        );
        let dead_letters = counter(
            "collect_connect_dead_letters_total",
            "Records sent to the dead-letter topic",
            &[],
        );
        let retries = counter(
            "collect_connect_retries_total",
            "Batch retries after retryable errors",
            &[],
        );
        let requests = counter(
            "collect_connect_requests_total",
            "Requests to the third party",
            &["outcome"],
        );
        let throttles = counter(
            "collect_connect_throttles_total",
            "Rate-limit waits and 429 answers",
            &[],
        );
        let written = counter(
            "collect_connect_written_total",
            "Rows or messages stored by the third party",
            &[],
        );
        let lag = IntGaugeVec::new(
            Opts::new("collect_connect_consumer_lag", "Records not yet committed"),
            labels,
        )
        .expect("metric");
        let state = IntGaugeVec::new(
            Opts::new(
                "collect_connect_integration_state",
                "1 for the integration's current state here",
            ),
            &["integration", "kind", "state"],
        )
        .expect("metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("collect_connect_batch_size", "Events per batch").buckets(vec![
                1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
            ]),
            &["kind"],
        )
        .expect("metric");
        let commit_to_durable = HistogramVec::new(
            HistogramOpts::new(
                "collect_connect_commit_to_durable_seconds",
                "Postgres commit to durable at the third party, per event",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
            ]),
            labels,
        )
        .expect("metric");
        let oldest_undelivered_age = prometheus::GaugeVec::new(
            Opts::new(
                "collect_connect_oldest_undelivered_age_seconds",
                "Age of the oldest event read and not yet durable",
            ),
            labels,
        )
        .expect("metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let feed_held_bytes = gauge(
            "collect_connect_feed_held_bytes",
            "Bytes of the memory budget held by records read and not yet done with",
        );
        let feed_behind = gauge(
            "collect_connect_feed_behind",
            "Integrations' partitions read by a catch-up consumer",
        );
        let feed_subscriptions = gauge(
            "collect_connect_feed_subscriptions",
            "Integrations reading from this process's feed",
        );
        let feed_live_lag = gauge(
            "collect_connect_feed_live_lag",
            "Records between the live consumer's position and the partitions' ends",
        );
        for c in [
            Box::new(lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(state.clone()),
            Box::new(batch_size.clone()),
            Box::new(commit_to_durable.clone()),
            Box::new(oldest_undelivered_age.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Arc::new(Self {
            registry,
            lag,
            delivered,
            committed,
            dead_letters,
            retries,
            batch_size,
            requests,
            throttles,
            written,
            commit_to_durable,
            oldest_undelivered_age,
            state,
            feed_held_bytes,
            feed_behind,
            feed_subscriptions,
            feed_live_lag,
        })
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }

    /// Creates every series of integration `id` at zero, so that dashboards and alerts see
    /// it before its first retry, throttle or dead letter.
    pub fn touch(&self, id: &str, kind: &str) {
        let l = [id, kind];
        for c in [
            &self.delivered,
            &self.committed,
            &self.dead_letters,
            &self.retries,
            &self.throttles,
            &self.written,
        ] {
            c.with_label_values(&l).inc_by(0);
        }
        for outcome in ["ok", "throttled", "error"] {
            self.requests
                .with_label_values(&[id, kind, outcome])
                .inc_by(0);
        }
        self.lag.with_label_values(&l);
        self.oldest_undelivered_age.with_label_values(&l).set(0.0);
        self.commit_to_durable.with_label_values(&l);
    }

    /// The handle a sink of integration `id` and kind `kind` updates.
    pub fn sink(self: &Arc<Self>, id: &str, kind: &str) -> SinkMetrics {
        SinkMetrics {
            metrics: self.clone(),
            labels: [id.to_string(), kind.to_string()],
        }
    }
}

/// Counters a sink updates, already labelled with its integration.
#[derive(Clone)]
pub struct SinkMetrics {
    metrics: Arc<Metrics>,
    labels: [String; 2],
}

impl SinkMetrics {
    fn l(&self) -> [&str; 2] {
        [&self.labels[0], &self.labels[1]]
    }

    /// One request to the third party ended with `outcome` (`ok`, `throttled`, `error`).
    pub fn request(&self, outcome: &str) {
        let [a, b] = self.l();
        self.metrics
            .requests
            .with_label_values(&[a, b, outcome])
            .inc();
    }

    /// The sink was throttled (a rate-limit wait or a 429).
    pub fn throttled(&self) {
        self.metrics.throttles.with_label_values(&self.l()).inc();
    }

    /// The third party stored `n` rows or messages.
    pub fn written(&self, n: u64) {
        self.metrics.written.with_label_values(&self.l()).inc_by(n);
    }
}
