//! The reader's part of a response's trace.
//!
//! The API stores the W3C `traceparent` of the request that wrote each revision in
//! `responses.trace_context`. For each record of such a row the reader starts a `create
//! {topic}` span (kind producer) as that request's child and puts the span's context in the
//! record's `traceparent` header; each transaction becomes one `send` span (kind client)
//! linked to the create spans of its records, as OpenTelemetry's messaging conventions
//! describe a batch publish ("Semantic conventions for messaging spans": create and send
//! operations, "Kafka"). With traces off, the stored `traceparent` goes into the header
//! unchanged and no span is built.

use std::time::SystemTime;

use collect_pgoutput::Lsn;
use collect_telemetry::opentelemetry::KeyValue;
use collect_telemetry::opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, TraceContextExt as _, Tracer as _,
};
use collect_telemetry::{TRACEPARENT, semconv};

use crate::kafka::OutRecord;

/// Longest stored `traceparent` passed on (55 characters in version 00; room for more).
pub(crate) const MAX_TRACEPARENT: usize = 256;

/// Links kept per transaction span (the SDK's default limit of links per span).
const MAX_LINKS: usize = 128;

/// Puts the trace context of a row's request on its record: a `create` span's context when
/// traces are on, the stored `traceparent` as it is when not. Returns the span's context,
/// for the transaction's `send` span to link to.
pub(crate) fn stamp(record: &mut OutRecord, stored: Option<&str>) -> Option<SpanContext> {
    let stored = stored.filter(|s| !s.is_empty() && s.len() <= MAX_TRACEPARENT)?;
    if !collect_telemetry::enabled() {
        record
            .headers
            .push((TRACEPARENT.into(), stored.to_string()));
        return None;
    }
    let Some(parent) = collect_telemetry::remote(stored) else {
        return None; // malformed: no header, no span
    };
    let tracer = collect_telemetry::tracer();
    let span = tracer
        .span_builder(format!("create {}", record.topic))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "create"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "create"),
            KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, record.topic.clone()),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_PARTITION_ID,
                record.partition.to_string(),
            ),
            KeyValue::new(semconv::MESSAGING_KAFKA_MESSAGE_KEY, record.key.clone()),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let header = collect_telemetry::traceparent(&cx).unwrap_or_else(|| stored.to_string());
    record.headers.push((TRACEPARENT.into(), header));
    let sc = cx.span().span_context().clone();
    cx.span().end();
    Some(sc)
}

/// A transaction being read, for its `send` span.
pub(crate) struct TxTrace {
    start: SystemTime,
    links: Vec<SpanContext>,
    records: usize,
}

impl TxTrace {
    /// `None` when traces are off: nothing is kept per transaction then.
    pub(crate) fn begin() -> Option<Self> {
        collect_telemetry::enabled().then(|| Self {
            start: SystemTime::now(),
            links: Vec::new(),
            records: 0,
        })
    }

    /// A record of the transaction was handed to the producer.
    pub(crate) fn record(&mut self, link: Option<SpanContext>) {
        self.records += 1;
        if let Some(l) = link
            && self.links.len() < MAX_LINKS
        {
            self.links.push(l);
        }
    }

    /// Ends the transaction's `send` span at its commit (none for a transaction without a
    /// traced record).
    pub(crate) fn commit(self, xid: u32, commit_lsn: Lsn) {
        if self.links.is_empty() {
            return; // no traced record: nothing to link
        }
        let tracer = collect_telemetry::tracer();
        tracer
            .span_builder("send")
            .with_kind(SpanKind::Client)
            .with_start_time(self.start)
            .with_links(self.links.into_iter().map(Link::with_context).collect())
            .with_attributes([
                KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
                KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "send"),
                KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "send"),
                KeyValue::new(semconv::MESSAGING_BATCH_MESSAGE_COUNT, self.records as i64),
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("collect.cdc.xid", i64::from(xid)),
                KeyValue::new("collect.cdc.commit_lsn", commit_lsn.to_string()),
            ])
            .start(&tracer)
            .end();
    }
}
