//! The Collect forms API: forms, questions and responses over HTTP and JSON.
//!
//! Backend teams write through this API; it never knows which integrations exist. Every
//! malformed request gets a JSON error (`{"error": {"code", "message", "details"?}}`) and
//! writes nothing.

mod error;
pub mod extract;
mod forms;
mod metrics;
mod ops;
mod responses;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, patch};
use collect_store::Store;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use extract::BODY_LIMIT;
pub use metrics::Metrics;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Database access.
    pub store: Store,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// State over a store, with fresh metrics.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/forms", get(forms::list).post(forms::create))
        .route("/forms/{form_id}", get(forms::get))
        .route(
            "/forms/{form_id}/questions",
            axum::routing::post(forms::add_question),
        )
        .route(
            "/forms/{form_id}/questions/{question_id}",
            patch(forms::update_question).delete(forms::delete_question),
        )
        .route(
            "/forms/{form_id}/responses",
            get(responses::list).post(responses::submit),
        )
        .route(
            "/forms/{form_id}/responses/{response_id}",
            get(responses::get)
                .patch(responses::update)
                .delete(responses::delete),
        );
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed on this path",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(on_response),
        )
        .with_state(state)
}

/// The span of one request, named and attributed by OpenTelemetry's HTTP server conventions
/// (`{method} {route}`, kind server), continuing the caller's W3C `traceparent` if it sent
/// one. The responses it writes store this span's context (`responses.trace_context`).
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    if matches!(route, "/healthz" | "/readyz" | "/metrics") {
        return tracing::Span::none(); // probes and scrapes: no trace each
    }
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    if collect_telemetry::enabled() {
        use collect_telemetry::SpanExt as _;
        let _ = span.set_parent(collect_telemetry::from_headers(req.headers()));
    }
    span
}

fn on_response<B>(
    res: &axum::http::Response<B>,
    latency: std::time::Duration,
    span: &tracing::Span,
) {
    let status = res.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    tracing::debug!(
        status,
        latency_ms = latency.as_millis() as u64,
        "request answered"
    );
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
