//! The connector runtime's part of a response's trace.
//!
//! Each record read with a `traceparent` header (the reader's `create` span) gets a
//! `process {topic}` span (kind consumer) as its child, from the moment it is read until
//! its batch is durable at the third party or dead-lettered. Each attempt to write a batch
//! runs in a `write {kind}` span (kind client) linked to the process span of every traced
//! event in it, as OpenTelemetry's messaging conventions have a batch link to the messages
//! it handles ("Semantic conventions for messaging spans": process operation, links). The
//! sinks' outbound requests to Google and Twilio carry the write span's `traceparent`
//! ([`collect_telemetry::inject`]). With traces off, no span is built.

use collect_telemetry::opentelemetry::global::BoxedSpan;
use collect_telemetry::opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use collect_telemetry::opentelemetry::{Context, KeyValue};
use collect_telemetry::{SpanExt as _, TRACEPARENT, semconv};
use rdkafka::message::Headers as _;

/// The `traceparent` header of a record, if it has a well-formed one.
pub(crate) fn traceparent(msg: &impl rdkafka::message::Message) -> Option<String> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == TRACEPARENT)
        .and_then(|h| h.value)
        .filter(|v| v.len() <= 256)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
}

/// Where a record was read, for its span's attributes.
pub(crate) struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub group: &'a str,
    pub key: Option<&'a [u8]>,
}

/// Starts the `process {topic}` span of a traced record (`None` when untraced or off).
pub(crate) fn process(traceparent: Option<&str>, src: &Source<'_>) -> Option<BoxedSpan> {
    if !collect_telemetry::enabled() {
        return None;
    }
    let parent: Context = collect_telemetry::remote(traceparent?)?;
    let tracer = collect_telemetry::tracer();
    let mut attributes = vec![
        KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
        KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "process"),
        KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "process"),
        KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, src.topic.to_string()),
        KeyValue::new(
            semconv::MESSAGING_DESTINATION_PARTITION_ID,
            src.partition.to_string(),
        ),
        KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, src.offset),
        KeyValue::new(
            semconv::MESSAGING_CONSUMER_GROUP_NAME,
            src.group.to_string(),
        ),
    ];
    if let Some(k) = src.key.and_then(|k| std::str::from_utf8(k).ok()) {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_KAFKA_MESSAGE_KEY,
            k.to_string(),
        ));
    }
    Some(
        tracer
            .span_builder(format!("process {}", src.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent),
    )
}

/// Ends a record's process span: `Ok` when its effect is durable, the reason when it went
/// to the dead-letter topic.
pub(crate) fn finish(span: Option<BoxedSpan>, rejected: Option<&str>) {
    if let Some(mut s) = span {
        if let Some(reason) = rejected {
            s.set_status(Status::error(reason.to_string()));
        }
        s.end();
    }
}

/// The span of one batch write, linked to its events' process spans.
pub(crate) fn batch<'a>(
    kind: &str,
    integration: &str,
    events: usize,
    links: impl Iterator<Item = &'a BoxedSpan>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "write",
        otel.name = format!("write {kind}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        collect.integration.id = integration,
        collect.integration.kind = kind,
        messaging.batch.message_count = events,
    );
    // The SDK keeps 128 links a span (its default limit); a Sheets batch holds thousands.
    for l in links.take(128) {
        span.add_link(l.span_context().clone());
    }
    span
}
