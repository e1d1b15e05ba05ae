//! JSON log lines with the trace and span ids of the span they were logged in.

use std::fmt;

use opentelemetry::trace::{SpanId, TraceId};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `tracing-subscriber`'s JSON line (`timestamp`, `level`, `fields`, `target`, `span`,
/// `spans`) with `trace_id` and `span_id` added when the event was logged inside a traced
/// span: 32 and 16 lowercase hex digits, the ids of W3C Trace Context.
pub(crate) struct WithTraceIds {
    inner: Format<Json>,
}

impl Default for WithTraceIds {
    fn default() -> Self {
        Self {
            inner: Format::default().json(),
        }
    }
}

/// The ids of the innermost span of the current scope that has an OpenTelemetry context.
fn ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(TraceId, SpanId)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    ctx.lookup_current()?.scope().find_map(|span| {
        let ext = span.extensions();
        let data = ext.get::<OtelData>()?;
        let (t, s) = (data.trace_id()?, data.span_id()?);
        (t != TraceId::INVALID && s != SpanId::INVALID).then_some((t, s))
    })
}

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match (ids(ctx), line.trim_end().strip_suffix('}')) {
            (Some((t, s)), Some(object)) => {
                writeln!(
                    writer,
                    "{object},\"trace_id\":\"{t}\",\"span_id\":\"{s}\"}}"
                )
            }
            _ => writer.write_str(&line),
        }
    }
}
