//! Prometheus metrics of the API: requests by route and status, latency, submissions.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::AppState;

/// The API's metrics and the registry they are exported from.
pub struct Metrics {
    /// Registry rendered on `/metrics`.
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Responses stored by `POST .../responses`.
    pub submissions: IntCounter,
    /// Submissions answered from an earlier one with the same idempotency key.
    pub replays: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    #[allow(clippy::expect_used)] // static names and labels: registration cannot fail
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "collect_api_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "collect_api_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        let submissions =
            IntCounter::new("collect_api_responses_submitted_total", "Responses stored")
                .expect("valid metric");
        let replays = IntCounter::new(
            "collect_api_idempotent_replays_total",
            "Submissions answered from an earlier one with the same Idempotency-Key",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(submissions.clone()),
            Box::new(replays.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self {
            registry,
            requests,
            latency,
            submissions,
            replays,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// Middleware recording every request under its route template (not its raw path, which
/// would make one series per id).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let m = &state.metrics;
    m.latency
        .with_label_values(&[&method, &route])
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    response
}
