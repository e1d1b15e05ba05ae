//! Logs and traces of every Collect process.
//!
//! **Logs** go to stderr, as text or as one JSON object per line. In JSON, an event logged
//! inside a traced span carries that span's `trace_id` and `span_id` (hex, as in W3C Trace
//! Context), so a log line leads to its trace (README, "Logs").
//!
//! **Traces** follow one response from the forms API to the third party's request, with
//! OpenTelemetry. They are configured by the standard environment variables of the
//! OpenTelemetry specification ("Environment Variable Specification", "OTLP Exporter
//! Configuration") and are off unless an OTLP endpoint is set:
//!
//! | Variable | Meaning here |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | where spans go; traces are off when neither is set |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` | `http/protobuf` (default) or `grpc` |
//! | `OTEL_EXPORTER_OTLP_HEADERS` | read by the exporter |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` | milliseconds per export (10,000 by default) |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource; the service name defaults to `collect-<subcommand>` |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampling (default: parent-based, always on) |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | the batch span processor: its queue is bounded, spans beyond it are dropped, never waited for |
//! | `OTEL_TRACES_EXPORTER` | `otlp` (default) or `none` |
//! | `OTEL_SDK_DISABLED` | `true` turns traces off |
//!
//! A value this build does not support (`http/json`, another exporter) or an exporter that
//! cannot be built turns traces off with a warning in the log, as the specification asks:
//! a telemetry setting never stops a process.
//! The trace context crosses process boundaries as a W3C `traceparent` ("Trace Context",
//! W3C Recommendation): in the API's HTTP requests, in the `responses.trace_context`
//! column, in a `traceparent` header on each Kafka record, and on the connectors' outbound
//! requests. A reader that does not trace copies the stored context into the record header
//! unchanged; an API or a connector that does not trace stores or sends none.

mod json;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use opentelemetry;
pub use opentelemetry_semantic_conventions::attribute as semconv;
pub use tracing_opentelemetry::OpenTelemetrySpanExt as SpanExt;

/// The W3C Trace Context header (and Kafka record header) that carries a span's context.
pub const TRACEPARENT: &str = "traceparent";

/// Name of the tracer (the instrumentation scope) of every Collect span.
pub const SCOPE: &str = "collect";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (fields: README, "Logs").
    Json,
}

/// Why telemetry could not start: a setting the operator must fix.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable holds a value this build does not support.
    #[error("{variable}={value}: {problem}")]
    Unsupported {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is supported instead.
        problem: &'static str,
    },
    /// The OTLP exporter could not be built (a malformed endpoint, for example).
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Keeps the tracer provider; [`Telemetry::shutdown`] exports the spans still queued.
#[must_use = "dropping it without shutdown loses the spans still queued"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the queued spans (bounded by the exporter's timeout) and stops the exporter.
    /// Blocks the calling thread: call it outside the async runtime's worker threads, or
    /// from `spawn_blocking`.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// The trace settings read from the environment; `None` when traces are off.
fn otlp_protocol() -> Result<Option<&'static str>, TelemetryError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(TelemetryError::Unsupported {
                variable: "OTEL_TRACES_EXPORTER",
                value: other.to_string(),
                problem: "supported: otlp, none",
            });
        }
    }
    if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        && var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    let (variable, value) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into()),
        ),
    };
    match value.trim() {
        "http/protobuf" => Ok(Some("http/protobuf")),
        "grpc" => Ok(Some("grpc")),
        _ => Err(TelemetryError::Unsupported {
            variable,
            value,
            problem: "supported: http/protobuf, grpc",
        }),
    }
}

fn provider(service: &str, protocol: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = match protocol {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(export_client::BlockingClient::new())
            .build(),
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Starts logging on stderr (filtered by `RUST_LOG`, `info` by default) and, when an OTLP
/// endpoint is configured, trace export for `service` (e.g. `collect-api`). Call once, from
/// inside the Tokio runtime (the gRPC exporter's channel lives on it). A trace setting
/// that cannot be used ([`TelemetryError`]) is logged as a warning and traces stay off.
pub fn init(service: &str, format: LogFormat) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, problem) = match otlp_protocol().and_then(|p| match p {
        Some(protocol) => provider(service, protocol).map(Some),
        None => Ok(None),
    }) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // The exporter's debug lines show OTEL_EXPORTER_OTLP_HEADERS (API keys, often).
        .add_directive(
            "opentelemetry_otlp=warn"
                .parse()
                .unwrap_or_else(|_| tracing::Level::WARN.into()),
        );
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::WithTraceIds::default())
            .boxed(),
    };
    // Spans of Collect's own crates at info and above become OpenTelemetry spans, whatever
    // RUST_LOG says about logs.
    let otel = provider.as_ref().map(|p| {
        global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SCOPE))
            .with_filter(Targets::new().with_target("collect", tracing::Level::INFO))
    });
    Registry::default()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    ENABLED.store(provider.is_some(), Ordering::Relaxed);
    if let Some(e) = problem {
        tracing::warn!(error = %e, "traces are off");
    }
    Telemetry { provider }
}

/// Whether spans are exported. When not, code on hot paths skips building spans and only
/// passes a context that arrived on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The `traceparent` of a context's span, `None` if it has no valid span context.
pub fn traceparent(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The remote parent context a `traceparent` value names; `None` if the value is malformed
/// (W3C Trace Context: ignore it), so no span is made for it.
pub fn remote(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The remote parent context of an incoming HTTP request's `traceparent` and `tracestate`
/// headers (an empty context when absent or malformed).
pub fn from_headers(headers: &::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// The context of the current `tracing` span (empty when traces are off).
pub fn current() -> Context {
    tracing::Span::current().context()
}

/// The `traceparent` of the current `tracing` span, if traced.
pub fn current_traceparent() -> Option<String> {
    if enabled() {
        traceparent(&current())
    } else {
        None
    }
}

/// Adds the current span's `traceparent` to an outbound request (a no-op when untraced).
pub fn inject(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current_traceparent() {
        Some(tp) => request.header(TRACEPARENT, tp),
        None => request,
    }
}

/// The tracer for spans made with the OpenTelemetry API directly (hot paths that do not go
/// through `tracing`); a no-op tracer when traces are off.
pub fn tracer() -> global::BoxedTracer {
    global::tracer(SCOPE)
}

mod export_client {
    //! The OTLP/HTTP exporter's client: the batch span processor exports from its own
    //! thread, outside the Tokio runtime, so the client is reqwest's blocking one (the
    //! workspace's reqwest and rustls, not a second HTTP stack).

    use bytes::Bytes;
    use opentelemetry_http::{HttpClient, HttpError, Request, Response};

    /// Built on first use, on the exporting thread: reqwest's blocking client cannot be built
    /// (nor dropped) inside the async runtime.
    #[derive(Debug, Default)]
    pub(crate) struct BlockingClient(std::sync::OnceLock<reqwest::blocking::Client>);

    impl BlockingClient {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        fn client(&self) -> &reqwest::blocking::Client {
            self.0.get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .timeout(timeout())
                    .build()
                    .unwrap_or_default()
            })
        }
    }

    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds;
    /// 10 s by default (the specification's).
    fn timeout() -> std::time::Duration {
        [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse::<u64>().ok())
        .map_or(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis,
        )
    }

    #[async_trait::async_trait]
    impl HttpClient for BlockingClient {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let (parts, body) = request.into_parts();
            let response = self
                .client()
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body.to_vec())
                .send()?;
            let mut out = Response::builder().status(response.status());
            for (k, v) in response.headers() {
                out = out.header(k, v);
            }
            Ok(out.body(response.bytes()?)?)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn traceparent_round_trips_and_malformed_ones_are_dropped() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote(tp).unwrap();
        assert_eq!(traceparent(&cx).as_deref(), Some(tp));
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(remote(bad).is_none(), "{bad}");
        }
    }
}
